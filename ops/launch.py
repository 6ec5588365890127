"""gpo launch: run a whole GPO training run on one machine, supervised.

    gpo launch --config ops/configs/demo.toml [--redis-url URL] [--run-id ID] [--actors N]
               [--estimators M] [--max-minutes T] [--max-updates U] [--set SECTION.KEY=V ...]
               [--resume | --fresh]

A run id whose directory already holds a run's state (a learner checkpoint, a Redis AOF) is
continued only with `--resume`, which says from which step and adapter version; `--fresh`
moves that directory aside (`<id>.<date>-<time>`) and starts over; with neither, the launch
is refused with a line that names both.

Starts a private redis-server when no `--redis-url` is given (AOF on, data in the run
directory), then the learner, N actors and M estimators as separate OS processes, each with
its own metrics port, log file and consumer name. A worker that dies is restarted with
exponential backoff, and the terminal says so. Every `progress_seconds` it scrapes every
process's `/metrics` and Redis, prints updates, reward, held-out accuracy, the adapter
version of every actor and estimator, the backlog of every stream and the time left, and
appends the same figures to `runs/<id>/progress.jsonl`. Ctrl-C (or reaching a limit) stops
every process with SIGTERM, writes the report (`runs/<id>/report.html` and PNG plots) and
prints where the results are. Prometheus can scrape all processes through the file-based
discovery list `runs/<id>/prometheus_targets.json` (see ops/prometheus.yml).
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ops.launch_progress import backlogs, done, progress_line, scrape
from ops.models import resolve_model
from ops.redis_server import RedisServer, free_port, is_memory_size
from ops.run_setup import (
    base_model,
    check_redis,
    launch_table,
    prepare_run_dir,
    set_flags,
    software,
    split_sets,
    validate_roles,
)
from ops.worker import Worker, prometheus_targets, tail
from protocol.config import ConfigError, apply_sets, from_mapping, load_toml
from protocol.streams import redact

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LaunchConfig:
    """TOML section `[launch]`: the shape of a local run."""

    bootstrap: dict = field(default_factory=dict)
    """With `run.model = "bootstrap"`: fields of `gpo bootstrap`'s config beyond the run's
    task and task options (which it takes from `[run]`), e.g. `{ seed = 1 }`."""
    actors: int = 1
    """Rollout actor processes."""
    estimators: int = 1
    """Advantage-estimator processes."""
    runs_dir: str = "runs"
    """Parent directory of run directories (`<runs_dir>/<run id>/`)."""
    max_minutes: float = 0.0
    """Stop the run after this many minutes (0: run until Ctrl-C or max_updates)."""
    max_updates: int = 0
    """Stop once the learner has made this many updates (0: no limit)."""
    progress_seconds: float = 5.0
    """Seconds between progress lines (and progress.jsonl records)."""
    restart_backoff_max: float = 30.0
    """Longest wait before restarting a crashed worker, in seconds."""
    max_restarts: int = 10
    """A worker that crashes this many times more stops the run with its last log lines."""
    torch_threads: int = 1
    """CPU threads per worker process (OMP_NUM_THREADS); more only helps on large machines."""
    stop_timeout: float = 60.0
    """Seconds a worker gets to finish its in-flight work after SIGTERM before it is killed."""
    redis_maxmemory: str = "2gb"
    """maxmemory of the private redis-server (noeviction: producers are throttled instead)."""
    report: bool = True
    """Write runs/<id>/report.html with plots when the run ends."""

    def __post_init__(self) -> None:
        if self.actors < 1 or self.estimators < 0:
            raise ConfigError("launch.actors must be >= 1 and launch.estimators >= 0")
        if not is_memory_size(self.redis_maxmemory):
            raise ConfigError(
                "launch.redis_maxmemory must be a whole number of bytes with an optional unit "
                f"(e.g. 2gb, 512mb, 4608kb), got {self.redis_maxmemory!r}"
            )
        if self.bootstrap:  # a mistake here is refused before anything starts
            from ops.tiny_policy.bootstrap import BootstrapConfig

            from_mapping(BootstrapConfig, dict(self.bootstrap), "launch.bootstrap")


class Launcher:
    def __init__(
        self,
        cfg: LaunchConfig,
        config_path: Path,
        run_id: str,
        redis_url: str | None,
        sets: list[str] = (),
        model: str = "",
    ):
        self.cfg, self.config_path, self.run_id = cfg, config_path, run_id
        self.model = model
        """The base model every worker gets (`run.model`); `bootstrap`: the tiny policy of
        `cfg.bootstrap`, built or reused at start; "": each worker's own setting."""
        self.sets = list(sets)
        """`SECTION.KEY=VALUE` overrides passed to every worker (each reads its sections)."""
        self.run_dir = Path(cfg.runs_dir).resolve() / run_id  # relative to where gpo launch runs
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.redis: RedisServer | None = None
        self.redis_url = redis_url
        self.workers: list[Worker] = []
        self.stopping = False
        self.failed = False
        self.start_time = time.monotonic()

    # ---------------------------------------------------------------- start

    def start(self, before_workers: Callable[[], None] | None = None) -> None:
        """Start the private redis-server (unless a URL was given), then the workers;
        `before_workers` runs in between (the chaos soak's audit groups)."""
        if self.redis_url is None:
            self.redis = RedisServer(
                self.run_dir / "redis",
                aof=True,
                password=secrets.token_urlsafe(24),  # loopback only, but not open to every user
                extra=("--maxmemory", self.cfg.redis_maxmemory, "--maxmemory-policy", "noeviction"),
            ).start()
            self.redis_url = self.redis.url
            print(
                f"private redis-server on 127.0.0.1:{self.redis.port} (AOF in {self.run_dir / 'redis'})"
            )
        if before_workers is not None:
            before_workers()
        model = resolve_model(self.model, self.cfg.bootstrap)
        for name, module, args, env in self.worker_specs(model):
            w = Worker(name, module, args, self.run_dir / "logs" / f"{name}.log", free_port(), env)
            w.start()
            self.workers.append(w)
        self.write_targets()
        self.start_time = time.monotonic()  # max_minutes and progress count the run, not the set-up
        (self.run_dir / "launch.json").write_text(
            json.dumps(
                {
                    "run_id": self.run_id,
                    "config": str(self.config_path),
                    "model": model,  # resolved base model dir; "": set in each process config
                    "redis_url": redact(self.redis_url),
                    "workers": {w.name: {"port": w.port, "log": str(w.log)} for w in self.workers},
                    "sets": self.sets,
                    "software": software(),
                },
                indent=2,
            )
        )
        print(
            f"run {self.run_id}: learner, {self.cfg.actors} actor(s), {self.cfg.estimators} estimator(s); "
            f"logs in {self.run_dir / 'logs'}"
        )

    def worker_specs(self, model: str) -> list[tuple[str, str, list[str], dict]]:
        """(name, module, arguments, environment) of every worker. The Redis URL, which may
        carry a password, goes in the environment (GPO_REDIS_URL), never on a command line."""
        common = [
            "--config",
            str(self.config_path),
            "--run-id",
            self.run_id,
            *(a for item in self.sets for a in ("--set", item)),
        ]
        env = {
            "GPO_REDIS_URL": self.redis_url,
            "OMP_NUM_THREADS": str(self.cfg.torch_threads),
            "MKL_NUM_THREADS": str(self.cfg.torch_threads),
            "PYTHONUNBUFFERED": "1",
        }
        base = [*common, *set_flags({"run.model": model} if model else {})]
        args = {role: list(base) for role in ("learner", "actor", "estimator")}
        args["learner"] += set_flags({"learner.checkpoint_dir": str(self.run_dir / "learner")})
        specs = [("learner", "learner.main", args["learner"], env)]
        specs += [
            (f"actor-{i}", "actors.actor", args["actor"], env) for i in range(self.cfg.actors)
        ]
        specs += [
            (f"estimator-{i}", "actors.estimator", args["estimator"], env)
            for i in range(self.cfg.estimators)
        ]
        return specs

    @property
    def sd_file(self) -> Path:
        """The file_sd list ops/prometheus.yml watches (`<runs_dir>/prometheus/*.json`: file_sd
        globs only the last path segment); removed when the run stops."""
        return self.run_dir.parent / "prometheus" / f"{self.run_id}.json"

    def write_targets(self) -> None:
        """Prometheus file_sd list: one target per process, labelled with its role and name;
        kept as runs/<id>/prometheus_targets.json and served to Prometheus as `sd_file`."""
        targets = prometheus_targets(self.run_id, self.workers)
        for path in (self.run_dir / "prometheus_targets.json", self.sd_file):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(targets, indent=2))
            tmp.replace(path)

    # ---------------------------------------------------------------- supervise

    def supervise_once(self) -> str | None:
        """Restart crashed workers; returns a reason to stop the run, or None."""
        now = time.monotonic()
        for w in self.workers:
            if w.alive() or self.stopping:
                continue
            if w.proc is not None and w.next_start == 0.0:
                code = w.proc.returncode
                if w.name == "learner" and code == 0:
                    return "the learner finished"
                # Exit 2 is a user mistake (config, model, credentials) on a first start only:
                # a restart runs what already worked, so there it means Redis was unreachable
                # while the worker started (a Redis restart), and it is restarted like a crash.
                if code == 2 and w.restarts == 0:
                    self.failed = True
                    return f"{w.name} refused to start (exit 2):\n{tail(w.log)}"
                if w.restarts >= self.cfg.max_restarts:
                    self.failed = True
                    return (
                        f"{w.name} exited with code {code} after {w.restarts} restarts; giving "
                        f"up (launch.max_restarts):\n{tail(w.log)}"
                    )
                delay = min(self.cfg.restart_backoff_max, 2.0 ** min(w.restarts, 10))
                w.next_start = now + delay
                print(
                    f"! {w.name} exited with code {code}; restarting in {delay:.0f} s (log: {w.log})",
                    flush=True,
                )
            elif w.next_start and now >= w.next_start:
                w.restarts += 1
                w.next_start = 0.0
                w.start()
                print(f"! {w.name} restarted (restart #{w.restarts})", flush=True)
        return None

    def stop(self) -> None:
        self.stop_workers()
        if self.redis is not None:
            self.redis.stop()
        self.sd_file.unlink(missing_ok=True)  # Prometheus drops the targets; the data stays

    def stop_workers(self) -> dict[str, int | None]:
        """SIGTERM every worker, kill those still running after `stop_timeout`; their exit
        codes (None: never started). Redis stays up, so its streams can still be read."""
        self.stopping = True
        for w in self.workers:
            if w.alive():
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.stop_timeout
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"! {w.name} did not stop in {self.cfg.stop_timeout:.0f} s; killing it")
                w.proc.kill()
                w.proc.wait(10)
        return {w.name: w.proc.returncode if w.proc else None for w in self.workers}

    # ---------------------------------------------------------------- progress

    def snapshot(self) -> dict:
        """Scrape every live process and Redis; the figures of one progress record."""
        rec: dict = {"t": round(time.monotonic() - self.start_time, 1), "processes": {}}
        for w in self.workers:
            rec["processes"][w.name] = scrape(w.port) if w.alive() else None
        rec["backlog"] = backlogs(self.redis_url, self.run_id)
        return rec

    def run(self) -> int:
        interrupted = {"sig": None}

        def on_signal(sig, _frame):
            interrupted["sig"] = sig

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        reason = None
        next_progress = time.monotonic() + self.cfg.progress_seconds
        with (self.run_dir / "progress.jsonl").open("a") as progress:
            while reason is None:
                if interrupted["sig"] is not None:
                    reason = "interrupted"
                    break
                reason = self.supervise_once()
                if time.monotonic() >= next_progress:
                    rec = self.snapshot()
                    progress.write(json.dumps(rec) + "\n")
                    progress.flush()
                    print(progress_line(rec, self.cfg), flush=True)
                    reason = reason or done(rec, self.cfg)
                    next_progress = time.monotonic() + self.cfg.progress_seconds
                time.sleep(0.2)
            rec = self.snapshot()
            progress.write(json.dumps(rec) + "\n")
        print(f"stopping ({reason}) ...", flush=True)
        self.stop()
        if self.cfg.report:
            from ops.report import write_report

            report = write_report(self.run_dir)
            print(f"report: {report}")
        print(f"results: {self.run_dir}")
        return 1 if self.failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gpo launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        required=True,
        help="run TOML with [run], [launch], [learner], [actor], [estimator]",
    )
    p.add_argument("--redis-url", help="use this Redis instead of starting a private redis-server")
    p.add_argument("--run-id", help="run id (default: [run] id, else a timestamp)")
    p.add_argument("--model", help="base model directory, or `bootstrap` (overrides run.model)")
    p.add_argument("--actors", type=int, help="number of actors (overrides launch.actors)")
    p.add_argument(
        "--estimators", type=int, help="number of estimators (overrides launch.estimators)"
    )
    p.add_argument("--max-minutes", type=float, help="overrides launch.max_minutes")
    p.add_argument("--max-updates", type=int, help="overrides launch.max_updates")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (TOML syntax), e.g. --set estimator.mc.selection=random; "
        "launch.* keys apply here, the others go to every worker; repeatable",
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue the run id's earlier state (checkpoint, AOF)",
    )
    again.add_argument(
        "--fresh", action="store_true", help="move the run id's earlier state aside, start over"
    )
    args = p.parse_args(argv)
    try:
        overrides, worker_sets = split_sets(args.set)
        # the workers' --set flags count here too: `--set run.task=...` changes the policy
        data = apply_sets(load_toml(args.config), worker_sets)
        for key in ("actors", "estimators", "max_minutes", "max_updates"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        model = base_model(data, args.model)
        cfg = from_mapping(LaunchConfig, launch_table(data, overrides, model), "launch")
        validate_roles(data, worker_sets, model)
        if args.redis_url:
            check_redis(args.redis_url)
    except ConfigError as e:
        print(f"gpo launch: error: {e}", file=sys.stderr)
        return 2
    run_id = args.run_id or data.get("run", {}).get("id") or time.strftime("%Y%m%d-%H%M%S")
    try:
        print(prepare_run_dir(Path(cfg.runs_dir).resolve() / run_id, args.resume, args.fresh))
    except ConfigError as e:
        print(f"gpo launch: error: {e}", file=sys.stderr)
        return 2
    config_path = Path(args.config).resolve()
    launcher = Launcher(cfg, config_path, run_id, args.redis_url, worker_sets, model)
    try:
        launcher.start()
    except Exception:
        launcher.stop()
        raise
    return launcher.run()


if __name__ == "__main__":
    raise SystemExit(main())
