"""Benchmark: rollout throughput against the number of gpo-actor processes.

    gpo bench scaling [--config ops/configs/demo.toml] [--actors 1 2 4] [--seconds 30]
                      [--warmup 10] [--repeats 3] [--write-results]

Real `gpo-actor` processes on the tiny base policy (`gpo bootstrap`), started as `gpo launch`
starts them (`ops.worker.Worker`: same command line, one torch thread each), against a
private redis-server. This process stands in for the rest of the system: it keeps the
`prompts` backlog topped up with the learner's `Feeder` (target: `--prompt-backlog` engine
batches per actor, so actors never wait for work) and drains `trajectories` as the
estimators' group, acking at once (the `trajectories` backlog limit is raised so that
backpressure never stalls an actor). No learner and no estimator run, so every core not used
by Redis and this process goes to the actors.

A trial starts N actors under a fresh run id, waits until each has published a batch, then
`--warmup` seconds more, and counts the trajectories and completion tokens that arrive in the
next `--seconds`. The trials of one repeat run N = each of `--actors`, their order rotating
between repeats; speed-up is the median over repeats of (trajectories/s with N) / (with the
first N of the list) in the same repeat, efficiency is speed-up / (N / first N).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ops.bench.scaling_report import Trial, format_table, reading, summarise
from ops.harness import parser, write_bench_section
from ops.launch import LaunchConfig
from ops.models import resolve_model
from ops.redis_server import RedisServer, free_port
from ops.run_setup import validate_roles
from ops.worker import Worker
from protocol.config import RedisConfig, load_toml
from protocol.consumer import Consumer
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.run import expand_run
from protocol.streams import GROUP_ESTIMATORS, TRAJECTORIES, Keys, Link

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 300.0
"""Seconds all actors of a trial get to publish their first batch (loaded 2-core machine)."""
TRAJECTORY_BACKLOG = 100_000
"""`trajectories` backlog limit in the trials: far above what one window produces."""


async def _feed_and_drain(
    redis_cfg: RedisConfig, feeder_args: dict, state: dict, stop: asyncio.Event
) -> None:
    """Keep `prompts` topped up and drain `trajectories`, recording (time, tokens, actor)."""
    from learner.feeder import Feeder

    metrics = Metrics("bench")
    transport = TransportMetrics(metrics)
    link = Link(redis_cfg, transport)
    await link.connect()
    keys = Keys(redis_cfg.run_id)
    feeder = Feeder(
        Producer(link, keys, redis_cfg, transport), run_id=redis_cfg.run_id, **feeder_args
    )
    drain = Consumer(link, keys, TRAJECTORIES, GROUP_ESTIMATORS, "bench", redis_cfg, transport)
    await drain.ensure_group()

    async def feed() -> None:
        while not stop.is_set():
            await feeder.top_up()
            await asyncio.sleep(0.05)

    feeding = asyncio.create_task(feed())
    try:
        while not stop.is_set():
            got = await drain.read(count=512, block_ms=100)
            now = time.monotonic()
            for d in got:
                state["arrivals"].append((now, len(d.message.completion_token_ids)))
                state["actors"].add(d.message.actor)
            if got:
                await drain.ack(got)
            if feeding.done():
                feeding.result()  # a dead feeder ends the trial with its error
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        await link.close()
        metrics.close()


def run_trial(
    n: int, repeat: int, args: argparse.Namespace, server: RedisServer, model: str, logs: Path
) -> Trial:
    """Start `n` actors, measure one window, stop them. Feeding and draining run on an event
    loop in a thread of their own, so this thread only waits and counts."""
    run_id = f"scaling-{n}-{repeat}-{os.getpid()}"
    redis_cfg = RedisConfig(url=server.url, run_id=run_id, block_ms=200, socket_timeout=5.0)
    worker_args = [
        "--config",
        str(Path(args.config).resolve()),
        "--redis-url",
        server.url,
        "--run-id",
        run_id,
        "--set",
        f"run.model={json.dumps(model)}",
        "--set",
        f"redis.backlog_limits.{TRAJECTORIES}={TRAJECTORY_BACKLOG}",
    ]
    threads = str(LaunchConfig().torch_threads)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    state: dict = {"arrivals": [], "actors": set()}
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    batch = _actor_batch(args.config)
    feeder_args = _feeder_args(args.config, model, batch * n * args.prompt_backlog)

    def feed_and_drain() -> None:
        try:
            loop.run_until_complete(_feed_and_drain(redis_cfg, feeder_args, state, stop))
        except BaseException as e:  # reported by `_check` in the main thread
            state["error"] = e

    bench = threading.Thread(target=feed_and_drain, daemon=True)
    workers = [
        Worker(
            f"actor-{i}",
            "actors.actor",
            worker_args,
            logs / f"{run_id}-actor-{i}.log",
            free_port(),
            env,
        )
        for i in range(n)
    ]
    started = time.monotonic()
    bench.start()
    for w in workers:
        w.start()
    try:
        # 1. every actor has published at least one batch
        while len(state["actors"]) < n:
            _check(workers, bench, state, started)
            time.sleep(0.2)
        startup = time.monotonic() - started
        time.sleep(args.warmup)
        # 2. the measured window
        cpu0, t0 = _cpu_seconds(workers), time.monotonic()
        time.sleep(args.seconds)
        cpu1, t1 = _cpu_seconds(workers), time.monotonic()
        load = os.getloadavg()[0]
        _check(workers, bench, state, started)
        window = [tok for at, tok in list(state["arrivals"]) if t0 <= at < t1]
    finally:
        loop.call_soon_threadsafe(stop.set)
        _stop(workers)
        bench.join(timeout=30)
        loop.close()
        server.client().flushall()
    return Trial(n, repeat, t1 - t0, len(window), sum(window), startup, load, cpu1 - cpu0)


def _check(workers: list[Worker], bench: threading.Thread, state: dict, started: float) -> None:
    for w in workers:
        if not w.alive():
            tail = w.log.read_text(errors="replace").splitlines()[-5:]
            raise RuntimeError(f"{w.name} exited with {w.proc.returncode}:\n" + "\n".join(tail))
    if not bench.is_alive():
        raise RuntimeError(f"feeding and draining stopped: {state.get('error')!r}")
    if len(state["actors"]) < len(workers) and time.monotonic() - started > STARTUP_TIMEOUT:
        raise RuntimeError(f"actors did not all publish within {STARTUP_TIMEOUT:.0f} s")


def _cpu_seconds(workers: list[Worker]) -> float:
    """User + system CPU seconds the workers have used so far (Linux /proc; NaN elsewhere)."""
    try:
        total = 0
        for w in workers:
            fields = Path(f"/proc/{w.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return total / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _stop(workers: list[Worker], timeout: float = 60.0) -> None:
    """SIGTERM every actor (it finishes its batch and exits 0), then kill stragglers."""
    for w in workers:
        if w.alive():
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for w in workers:
        try:
            w.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(10)


def _actor_batch(config: str) -> int:
    """Prompts per actor engine batch (`actor.batch_messages` of the run config)."""
    return int(load_toml(config).get("actor", {}).get("batch_messages", 8))


def _feeder_args(config: str, model: str, target: int) -> dict:
    """The learner's feeder as the run config sets it up (the task and options of `[run]`,
    else `[learner]`)."""
    from transformers import AutoTokenizer

    from actors.tasks.base import load_task

    learner = expand_run(load_toml(config)).get("learner", {})
    tokenizer = AutoTokenizer.from_pretrained(model)
    task = load_task(learner.get("task", "arithmetic"), **learner.get("task_options", {}))
    return dict(
        prompts=task.train_prompts(),
        encode_text=lambda text: list(tokenizer(text)["input_ids"]),
        task_name=task.name,
        target=target,
        bound=2 * target,
        seed=0,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser("gpo bench scaling", __doc__.split("\n")[0], 3, "trials per actor count")
    p.add_argument(
        "--config", default=str(ROOT / "ops" / "configs" / "demo.toml"), help="run config"
    )
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4], help="actor counts")
    p.add_argument("--seconds", type=float, default=30.0, help="measured window per trial")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after the first batches")
    p.add_argument(
        "--prompt-backlog", type=int, default=4, help="prompt backlog, in engine batches per actor"
    )
    p.add_argument("--model", default="bootstrap", help="model directory or `bootstrap`")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if any(n < 1 for n in args.actors) or args.repeats < 1:
        print("gpo bench scaling: --actors must be >= 1 and --repeats >= 1", file=sys.stderr)
        return 2
    validate_roles(load_toml(args.config), [], "")  # a config mistake: one line, nothing started
    model = resolve_model(args.model)
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="gpo-scaling-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            for rep in range(args.repeats):
                k = rep % len(args.actors)
                for n in args.actors[k:] + args.actors[:k]:
                    t = run_trial(n, rep, args, server, model, Path(tmp) / "logs")
                    trials.append(t)
                    print(
                        f"repeat {rep} actors {n}: {t.trajectories_per_s:.1f} trajectories/s, "
                        f"{t.tokens_per_s:.0f} tokens/s (start-up {t.startup:.0f} s, "
                        f"load average {t.load:.1f})",
                        flush=True,
                    )
        finally:
            server.stop()
    rows = summarise(trials, args.actors)
    text = format_table(rows)
    paragraph = reading(rows, trials)
    print(f"{text}\n\n{paragraph}")
    if args.write_results:
        write_bench_section("scaling", argv, text, paragraph)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
