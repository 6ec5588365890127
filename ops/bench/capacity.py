"""Benchmark: what each stream costs Redis, the capacity model, and a simulated check of it.

    gpo bench capacity [--actors 64] [--tokens-per-s 3000] [--completion-tokens 1024]
                       [--prompt-tokens 256] [--adapter-mib 300] [--update-seconds 60]
                       [--sim-actors 64] [--sim-tokens-per-s 1500] [--sim-seconds 20]
                       [--no-cluster] [--write-results]

1. Per message, on loopback (ops/bench/capacity_costs.py): a private redis-server takes `--messages`
   messages of each work stream at the deployment's sizes, through the project's client:
   produced in batches, read by one consumer, acked, trimmed. From the server's INFO before
   and after: CPU (user + system), commands (commandstats, the scripts' inner commands
   included), bytes in and out, and memory per waiting entry (after the XADDs, before the
   reads). Adapter fetches are measured the same way, per MiB.
2. The model (`ops/bench/capacity_model.py`) at the deployment given on the command line:
   message rates, Redis load, and the most actors one Redis and a cluster carry.
3. A simulated check (ops/bench/capacity_sim.py): `--sim-actors` light actors (each a coroutine with its own
   connection and its own scripted engine, `actors/engines/scripted.py`, whose completions of
   `--sim-completion-tokens` tokens, logprobs and steps the trajectories carry; the
   generation's time is paced at `--sim-tokens-per-s`), light estimators turning
   each trajectory into samples and reset requests in GPO's proportions, a light learner
   acking the samples and publishing adapters that one actor per host fetches, all in this
   process against one Redis and then against a 3-node Redis Cluster. The message rates the
   streams' produced counters show over `--sim-seconds`, fed into the model, give a predicted
   server load, which is compared with the server's own INFO over the same window (per node
   on the cluster). On this 2-core machine the clients, not Redis, bound the simulation: it
   checks that costs add up linearly under 64 concurrent connections, not where Redis
   saturates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ops.bench.capacity_costs import BATCHING, Costs, Shapes, measure_costs
from ops.bench.capacity_model import (
    Deployment,
    capacity,
    deployment_loads,
    stream_rates,
    total,
)
from ops.bench.capacity_sim import Sim, SimResult, simulate
from ops.harness import console_table, markdown_table, parser, write_bench_section

# ---------------------------------------------------------------- the command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = parser("gpo bench capacity", __doc__)
    a = p.add_argument
    a("--actors", type=int, default=64, help="deployment: actors (one per inference GPU)")
    a("--tokens-per-s", type=float, default=3000.0, help="deployment: tokens/s per actor")
    a("--completion-tokens", type=int, default=1024, help="mean completion tokens")
    a("--prompt-tokens", type=int, default=256, help="mean prompt tokens")
    a("--adapter-mib", type=float, default=300.0, help="adapter size (7B, r=64, bf16: ~300)")
    a("--update-seconds", type=float, default=60.0, help="seconds between adapter versions")
    a("--processes-per-host", type=int, default=8, help="processes sharing one host cache")
    a("--messages", type=int, default=2000, help="messages per stream for the costs")
    a("--sim-actors", type=int, default=64, help="light actors in the simulated check")
    a("--sim-tokens-per-s", type=float, default=1500.0, help="their tokens/s each")
    a("--sim-completion-tokens", type=int, default=256, help="their completion tokens")
    a("--sim-adapter-mib", type=float, default=4.0, help="adapter size in the simulation")
    a("--sim-update-seconds", type=float, default=2.0, help="seconds between its versions")
    a("--sim-seconds", type=float, default=20.0, help="measured window of the simulation")
    a("--no-cluster", action="store_true", help="skip the 3-node cluster check")
    args = p.parse_args(argv)
    for name in ("actors", "completion_tokens", "prompt_tokens", "messages", "sim_actors"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("tokens_per_s", "update_seconds", "sim_tokens_per_s", "sim_seconds"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    return args


def deployment(args: argparse.Namespace) -> Deployment:
    return Deployment(
        actors=args.actors,
        tokens_per_s=args.tokens_per_s,
        completion_tokens=args.completion_tokens,
        prompt_tokens=args.prompt_tokens,
        adapter_mib=args.adapter_mib,
        updates_per_s=1 / args.update_seconds,
        processes_per_host=args.processes_per_host,
    )


def sim_deployment(args: argparse.Namespace) -> Deployment:
    return Deployment(
        actors=args.sim_actors,
        tokens_per_s=args.sim_tokens_per_s,
        completion_tokens=args.sim_completion_tokens,
        prompt_tokens=args.prompt_tokens,
        adapter_mib=args.sim_adapter_mib,
        updates_per_s=1 / args.sim_update_seconds,
        processes_per_host=args.processes_per_host,
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from ops.redis_cluster import LocalCluster
    from ops.redis_server import RedisServer

    d, sd = deployment(args), sim_deployment(args)
    checks: list[tuple[str, SimResult]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", extra=("--maxmemory", "0")).start()
        try:
            node = server.client()
            print(f"per message: {args.messages} messages per stream, at two message sizes")
            costs = asyncio.run(
                measure_costs(
                    server.url, node, Shapes(d.prompt_tokens, d.completion_tokens), args.messages
                )
            )
            sim_costs = asyncio.run(
                measure_costs(
                    server.url, node, Shapes(sd.prompt_tokens, sd.completion_tokens), args.messages
                )
            )
            node.flushall()
            print(f"simulated check: {sd.actors} light actors on one Redis")
            result = asyncio.run(
                simulate(
                    server.url, [node], lambda key: 0, sim_costs, Sim(sd, seconds=args.sim_seconds)
                )
            )
            checks.append(("one Redis", result))
        finally:
            server.stop()
        if not args.no_cluster:
            cluster = LocalCluster(Path(tmp) / "cluster").start()
            try:
                print(f"simulated check: {sd.actors} light actors on a 3-node cluster")
                clients = [n.client() for n in cluster.nodes]
                result = asyncio.run(
                    simulate(
                        cluster.url,
                        clients,
                        cluster.node_of,
                        sim_costs,
                        Sim(sd, seconds=args.sim_seconds),
                    )
                )
                checks.append(("3-node cluster", result))
            finally:
                cluster.stop()
    print()
    tables, reading = report(args, d, costs, checks)
    print(tables + "\n\n" + reading)
    if args.write_results:
        write_bench_section("capacity", argv, *report(args, d, costs, checks, md=True))
    return 0


# ---------------------------------------------------------------- report


def _si(x: float, unit: str = "") -> str:
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f} {prefix}{unit}"
    return f"{x:.1f} {unit}".strip()


def report(
    args: argparse.Namespace,
    d: Deployment,
    measured: Costs,
    checks: Sequence[tuple[str, SimResult]],
    md: bool = False,
) -> tuple[str, str]:
    costs, adapter, idle = measured.streams, measured.adapter, measured.idle
    table = markdown_table if md else (lambda h, r: console_table(h, r, left=1))
    cost_rows = [
        [
            s,
            f"{c.size}",
            f"{c.cpu_us:.1f}",
            f"{c.commands:.1f}",
            f"{c.bytes_in:.0f}",
            f"{c.bytes_out:.0f}",
            f"{c.memory:.0f}",
        ]
        for s, c in costs.items()
    ]
    cost_rows.append(
        [
            "a waiting consumer, per second",
            "-",
            f"{idle.cpu * 1e6:.0f}",
            f"{idle.commands_per_s:.2f}",
            f"{idle.bytes_in_per_s:.0f}",
            f"{idle.bytes_out_per_s:.0f}",
            "-",
        ]
    )
    cost_rows.append(
        [
            "adapter, per MiB fetched",
            "-",
            f"{adapter.cpu_us_per_mib:.0f}",
            "-",
            "-",
            f"{adapter.bytes_out_per_mib:.0f}",
            "-",
        ]
    )
    rates = stream_rates(d)
    loads = deployment_loads(costs, adapter, d, idle)
    load_rows = [
        [
            k,
            f"{rates.get(k, d.updates_per_s):.2f}",
            f"{v.cpu:.3f}",
            _si(v.commands_per_s),
            _si(v.bytes_in_per_s, "B/s"),
            _si(v.bytes_out_per_s, "B/s"),
            _si(v.memory, "B"),
        ]
        for k, v in loads.items()
    ]
    t = total(loads)
    load_rows.append(
        [
            "total",
            "-",
            f"{t.cpu:.3f}",
            _si(t.commands_per_s),
            _si(t.bytes_in_per_s, "B/s"),
            _si(t.bytes_out_per_s, "B/s"),
            _si(t.memory, "B"),
        ]
    )
    cap = capacity(costs, adapter, d, idle=idle)
    check_rows = []
    for name, res in checks:
        for i, (m, p) in enumerate(zip(res.measured, res.predicted)):
            where = name if len(res.measured) == 1 else f"{name}, node {i}"
            check_rows.append(
                [
                    where,
                    f"{p.cpu:.3f}",
                    f"{m.cpu:.3f}",
                    _ratio(m.cpu, p.cpu),
                    _si(p.commands_per_s),
                    _si(m.commands_per_s),
                    _ratio(m.commands_per_s, p.commands_per_s),
                    _si(p.bytes_out_per_s, "B/s"),
                    _si(m.bytes_out_per_s, "B/s"),
                    _ratio(m.bytes_out_per_s, p.bytes_out_per_s),
                ]
            )
    tables = (
        f"Per message, produced + read + acked + trimmed ({args.messages} per stream, "
        f"{d.prompt_tokens} prompt and {d.completion_tokens} completion tokens), batched as "
        "the processes batch them (messages per send / per read: "
        + ", ".join(f"{s} {w}/{r}" for s, (w, r) in BATCHING.items())
        + "):\n\n"
        + table(
            [
                "stream",
                "bytes",
                "server CPU us",
                "commands",
                "bytes in",
                "bytes out",
                "memory while waiting",
            ],
            cost_rows,
        )
        + f"\n\nThe model at {d.actors} actors x {d.tokens_per_s:.0f} tokens/s, "
        f"{d.adapter_mib:.0f} MiB adapter every {1 / d.updates_per_s:.0f} s fetched once by "
        f"each of {d.hosts} hosts, backlogs at {d.backlog}:\n\n"
        + table(["stream", "msg/s", "CPU (cores)", "commands/s", "in", "out", "memory"], load_rows)
    )
    if check_rows:
        sd = sim_deployment(args)
        tables += (
            f"\n\nSimulated check: {sd.actors} light actors x {sd.tokens_per_s:.0f} tokens/s, "
            f"{sd.completion_tokens} completion tokens, {sd.adapter_mib:.0f} MiB adapter every "
            f"{1 / sd.updates_per_s:.0f} s, {args.sim_seconds:.0f} s window; predicted = the "
            "model at the observed message rates:\n\n"
            + table(
                [
                    "server",
                    "CPU predicted",
                    "measured",
                    "ratio",
                    "commands/s predicted",
                    "measured",
                    "ratio",
                    "out predicted",
                    "measured",
                    "ratio",
                ],
                check_rows,
            )
        )
        for name, res in checks:
            tables += (
                f"\n\n{name}: observed msg/s "
                + ", ".join(f"{s} {r:.0f}" for s, r in res.rates.items())
                + f"; adapter {res.adapter_mib_per_s:.1f} MiB/s fetched"
            )
    text = (
        f"At this deployment one Redis carries about {cap.one_redis:.0f} actors before "
        f"{cap.one_redis_bound} (the model scales every rate with the actors); the deployment "
        f"above needs {t.cpu:.2f} of a core. A {cap.nodes}-node cluster, with each stream on "
        f"its own node, carries about {cap.cluster:.0f} ({cap.cluster_bound}): every key of "
        "one stream shares its hash tag, so one stream's node bounds a cluster, and past it "
        "the streams would have to be split."
    )
    if check_rows:
        ratios = [float(r[3]) for r in check_rows if r[3] != "-"]
        text += (
            f" In the simulated check the measured server CPU was {min(ratios):.2f}x to "
            f"{max(ratios):.2f}x the model's prediction at the observed rates (per server or "
            "node); commands and bytes are in the table. On a 2-core machine the light "
            "clients, not Redis, set the pace."
        )
    return tables, text


def _ratio(measured: float, predicted: float) -> str:
    return f"{measured / predicted:.2f}" if predicted > 0 else "-"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
