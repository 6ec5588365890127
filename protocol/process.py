"""What every gpo process shares: common flags, config loading, signals, Redis, metrics.

Each process entry point (`gpo-actor`, `gpo-estimator`, `gpo-learner`) does:

    parser = common_parser("gpo-actor", __doc__)
    args = parser.parse_args(argv)
    cfg, redis_cfg = load_config(args, "actor", ActorConfig)
    return run_process(main(cfg, redis_cfg, args), "actor")

and inside `main`, `async with Runtime("actor", redis_cfg, args) as rt:` gives it a
connected `Link`, the run's `Keys`, its `Metrics` (served on `--metrics-port`), and a
`stop` event set by SIGTERM/SIGINT. User mistakes (a bad config, an unreachable Redis, a
wrong password, a missing model) end in one `error: ...` line and exit code 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from protocol.config import (
    ConfigError,
    MetricsConfig,
    RedisConfig,
    from_mapping,
    load_toml,
)
from protocol.metrics import Metrics, TransportMetrics
from protocol.run import with_run_facts
from protocol.streams import Keys, Link, LinkClosed, RedisFatalError, run_async

log = logging.getLogger(__name__)
T = TypeVar("T")


STOP_GRACE_SECONDS = 30.0
"""After SIGTERM, how long a process keeps trying to reach Redis to finish its work."""


class UserError(RuntimeError):
    """A mistake the user can fix (missing model path, bad task spec); printed, exit 2."""


def common_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="TOML file: one section per process plus [run] and [redis]")
    p.add_argument(
        "--redis-url",
        help="redis:// or rediss:// URL (overrides GPO_REDIS_URL and [redis] url); give a URL "
        "with a password through GPO_REDIS_URL instead: command lines are visible to all users",
    )
    p.add_argument(
        "--run-id", help="run namespace shared by every process of a run (overrides [run] id)"
    )
    p.add_argument("--name", help="consumer name; default <process>-<host>-<pid>")
    p.add_argument(
        "--metrics-port", type=int, help="port of /metrics and /healthz (0 = any free port)"
    )
    p.add_argument(
        "--metrics-host",
        help="address the metrics server binds (overrides [metrics] host; default 127.0.0.1)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config field; VALUE is TOML (e.g. --set actor.n=8 --set actor.task='\"x\"')",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def load_config(args: argparse.Namespace, section: str, cls: type[T]) -> tuple[T, RedisConfig]:
    """The process's typed config and the Redis config, from file, then --set, then flags.
    Also settles `args.metrics_host`: the flag, else [metrics] host, else loopback."""
    data = with_run_facts(load_toml(args.config) if args.config else {}, args.set)
    # Other processes' sections may share the file; only this one, [run] and [redis] matter.
    redis_data = dict(data.get("redis", {}))
    run = data.get("run", {})
    if "id" in run:
        redis_data.setdefault("run_id", run["id"])
    # --redis-url, then GPO_REDIS_URL (where a password belongs: a command line is visible
    # to every user of the machine), then [redis] url, then the local default
    env_url = os.environ.get("GPO_REDIS_URL")
    if args.redis_url or env_url:
        redis_data["url"] = args.redis_url or env_url
    if args.run_id:
        redis_data["run_id"] = args.run_id
    redis_data.setdefault("url", "redis://127.0.0.1:6379/0")
    redis_cfg = from_mapping(RedisConfig, redis_data, "redis")
    metrics = dict(data.get("metrics", {}))
    if args.metrics_host is not None:
        metrics["host"] = args.metrics_host
    args.metrics_host = from_mapping(MetricsConfig, metrics, "metrics").host
    cfg = from_mapping(cls, data.get(section, {}), section)
    return cfg, redis_cfg


def default_name(process: str) -> str:
    return f"{process}-{socket.gethostname()}-{os.getpid()}"


@dataclass
class Runtime:
    """The connected parts of one process; use as `async with Runtime(...) as rt`."""

    process: str
    redis_cfg: RedisConfig
    name: str = ""
    metrics_port: int | None = None
    metrics_host: str = MetricsConfig().host

    async def __aenter__(self) -> Runtime:
        self.name = self.name or default_name(self.process)
        self.metrics = Metrics(self.process)
        self.transport = TransportMetrics(self.metrics)
        self.keys = Keys(self.redis_cfg.run_id)
        self.stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.link = Link(self.redis_cfg, self.transport)
        await self.link.connect()
        if self.metrics_port is not None:
            self.metrics_port = self.metrics.serve(self.metrics_port, host=self.metrics_host)
        log.info(
            "%s %s connected; run %s; metrics on :%s",
            self.process,
            self.name,
            self.keys.run_id,
            self.metrics_port,
        )
        return self

    def _on_signal(self, sig: int) -> None:
        if self.stop.is_set():  # a second signal: stop waiting for in-flight work
            log.warning("second %s: exiting now", signal.Signals(sig).name)
            os._exit(1)
        log.info("%s received: finishing in-flight work, then exiting", signal.Signals(sig).name)
        self.stop.set()
        self.link.give_up_at = time.monotonic() + STOP_GRACE_SECONDS

    async def __aexit__(self, *exc) -> None:
        await self.link.close()
        self.metrics.close()

    async def sleep(self, seconds: float) -> None:
        """Sleep that ends early when the process is asked to stop."""
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        except TimeoutError:
            pass


def run_process(main: Awaitable[int], process: str, log_level: str = "INFO") -> int:
    """Run a process's main coroutine; user mistakes become one line and exit code 2."""
    logging.basicConfig(
        level=getattr(logging, log_level), format=f"%(asctime)s {process} %(levelname)s %(message)s"
    )
    try:
        return run_async(main)
    except (ConfigError, RedisFatalError, UserError) as e:
        print(f"{process}: error: {e}", file=sys.stderr)
        return 2
    except LinkClosed as e:
        log.warning(
            "stopped without reaching Redis (%s); unacknowledged work will be redelivered", e
        )
        return 0


def cli_entry(parse_and_run) -> int:
    """Wrap an entry point so config errors raised while parsing also end in one line."""
    try:
        return parse_and_run()
    except (ConfigError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
