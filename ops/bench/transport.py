"""Transport benchmark: the stream client against raw redis-py and redis-benchmark.

    python -m ops.bench transport [--messages 4000] [--tokens 2048] [--batch 64] [--repeats 3]

1. produce -> consume -> ack of Trajectory-sized messages (`--tokens` completion tokens with
   logprobs), side by side on one private redis-server: (a) through the project's client
   (encode, XADD+counter in MULTI, XREADGROUP, strict decode, owner-checked ack script) and
   (b) raw redis-py XADD / XREADGROUP / XACK of the same bytes with no decode. Producer and
   consumer run concurrently in one event loop, same batch size. Prints messages/s, p50/p99
   latency (produce to ack) and the client/raw ratios; the median of `--repeats` runs.
2. `redis-benchmark` pipelining XADD of the same payload: the server's own ceiling.
3. A 64 MiB adapter fetched by 8 concurrent readers: chunked (the project's path) vs one
   64 MiB value, seconds and Redis peak client-buffer memory (INFO `mem_clients_normal`).
All three run in each of the `--repeats` rounds, in turn; medians are reported (for the
client buffers, the largest peak).

`--write-results` also writes these tables into section `bench-transport` of docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np

from ops.bench.broadcast import safetensors_blob
from ops.harness import alternate, parser, write_bench_section
from protocol.adapters import fetch_adapter, publish_adapter
from protocol.codec import decode, encode
from protocol.config import RedisConfig
from protocol.consumer import FIELD, Consumer
from protocol.messages import Trajectory
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.streams import GROUP_ESTIMATORS, TRAJECTORIES, Keys, Link, make_client

TARGET = 0.8
"""The client's throughput as a share of raw redis-py's that the project aims for."""


def trajectory(i: int, tokens: int, rng: np.random.Generator) -> Trajectory:
    return Trajectory(
        id=f"p{i}/0",
        run="bench",
        ts=time.time(),
        prompt_id=f"p{i}",
        task="arith",
        answer="42",
        kind="fresh",
        parent_id=None,
        reset_step=None,
        reset_value=None,
        prompt_len=200,
        prefix_token_ids=rng.integers(0, 32000, 256).tolist(),
        completion_token_ids=rng.integers(0, 32000, tokens).tolist(),
        logprobs=(-rng.random(tokens)).astype(np.float32).tolist(),
        step_spans=[(k, min(k + 128, tokens)) for k in range(0, tokens, 128)],
        reward=1.0,
        policy_version=3,
        actor="bench",
        gen_seconds=1.5,
    )


async def run_client(
    url: str, run: str, msgs: list[Trajectory], batch: int
) -> tuple[float, list[float]]:
    cfg = RedisConfig(
        url=url, run_id=run, batch_size=batch, block_ms=200, socket_timeout=5, backlog_limit=10**9
    )
    tm = TransportMetrics(Metrics("bench"))
    keys = Keys(run)
    plink, clink = Link(cfg, tm), Link(cfg, tm)
    producer = Producer(plink, keys, cfg, tm)
    consumer = Consumer(clink, keys, TRAJECTORIES, GROUP_ESTIMATORS, "c0", cfg, tm)
    await consumer.ensure_group()
    sent_at: dict[str, float] = {}
    latencies: list[float] = []

    async def produce():
        for i in range(0, len(msgs), batch):
            chunk = msgs[i : i + batch]
            now = time.perf_counter()
            for m in chunk:
                sent_at[m.id] = now
            await producer.send(TRAJECTORIES, chunk)

    async def consume():
        done = 0
        while done < len(msgs):
            got = await consumer.read(count=batch)
            if got:
                await consumer.ack(got)
                now = time.perf_counter()
                latencies.extend(now - sent_at[d.message.id] for d in got)
                done += len(got)

    start = time.perf_counter()
    await asyncio.gather(produce(), consume())
    elapsed = time.perf_counter() - start
    await plink.close()
    await clink.close()
    return len(msgs) / elapsed, latencies


async def run_raw(
    url: str, run: str, payloads: list[bytes], batch: int
) -> tuple[float, list[float]]:
    cfg = RedisConfig(url=url, run_id=run, socket_timeout=5, block_ms=200)
    key = f"raw:{run}"
    pr, cr = make_client(cfg), make_client(cfg)
    await cr.xgroup_create(key, "g", id="0", mkstream=True)
    sent_at: dict[bytes, float] = {}
    latencies: list[float] = []

    async def produce():
        for i in range(0, len(payloads), batch):
            async with pr.pipeline(transaction=False) as p:
                for raw in payloads[i : i + batch]:
                    p.xadd(key, {FIELD: raw})
                now = time.perf_counter()
                ids = await p.execute()
            for eid in ids:
                sent_at[eid] = now

    async def consume():
        done = 0
        while done < len(payloads):
            resp = await cr.xreadgroup("g", "c0", {key: ">"}, count=batch, block=200)
            if not resp:
                continue
            entries = resp[0][1]
            await cr.xack(key, "g", *[eid for eid, _ in entries])
            now = time.perf_counter()
            latencies.extend(now - sent_at.get(eid, now) for eid, _ in entries)
            done += len(entries)

    start = time.perf_counter()
    await asyncio.gather(produce(), consume())
    elapsed = time.perf_counter() - start
    await pr.aclose()
    await cr.aclose()
    return len(payloads) / elapsed, latencies


def redis_benchmark(port: int, payload_size: int, n: int) -> float | None:
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return None
    value = "x" * payload_size
    out = subprocess.run(
        [
            exe,
            "-p",
            str(port),
            "-n",
            str(n),
            "-P",
            "64",
            "-c",
            "1",
            "-q",
            "XADD",
            "rb",
            "*",
            "m",
            value,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    # "XADD rb * m xxx...: 12345.67 requests per second, p50=..."
    for part in out.replace("\r", "\n").split("\n"):
        if "requests per second" in part:
            return float(part.split(":")[-1].split("requests")[0].strip().split()[-1])
    return None


async def adapter_fetch(url: str, size_mb: int, readers: int) -> dict[str, tuple[float, int]]:
    cfg = RedisConfig(url=url, run_id="adapter", socket_timeout=30, block_ms=200)
    keys = Keys("adapter")
    blob = safetensors_blob(size_mb)
    admin = make_client(cfg)
    results = {}

    async def sample_peak(stop: asyncio.Event) -> int:
        peak = 0
        while not stop.is_set():
            info = await admin.info("memory")
            peak = max(peak, int(info.get("mem_clients_normal", 0)))
            await asyncio.sleep(0.01)
        return peak

    # (a) the project's path: 4 MiB chunks, bounded concurrency per reader, sha256 checked
    pub = Link(cfg)
    pointer = await publish_adapter(pub, keys, 1, blob, {"r": 8}, "bench")
    links = [Link(cfg) for _ in range(readers)]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_peak(stop))
    start = time.perf_counter()
    fetched = await asyncio.gather(*(fetch_adapter(link, pointer) for link in links))
    secs = time.perf_counter() - start
    stop.set()
    assert all(bytes(a.safetensors_bytes) == blob for a in fetched)
    results["chunked 4 MiB"] = (secs, await sampler)

    # (b) one big value, each reader GETs it whole
    await admin.set("adapter:whole", blob)
    clients = [make_client(cfg) for _ in range(readers)]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_peak(stop))
    start = time.perf_counter()
    whole = await asyncio.gather(*(c.get("adapter:whole") for c in clients))
    secs = time.perf_counter() - start
    stop.set()
    assert all(w == blob for w in whole)
    results["single value"] = (secs, await sampler)
    for c in [*clients, admin]:
        await c.aclose()
    for link in [pub, *links]:
        await link.close()
    return results


def median_fetch(runs: list[dict[str, tuple[float, int]]]) -> dict[str, tuple[float, int]]:
    """Per path: the median seconds and the largest peak of client buffers over the runs."""
    return {
        path: (
            statistics.median(run[path][0] for run in runs),
            max(run[path][1] for run in runs),
        )
        for path in runs[0]
    }


def codec_profile(msgs: list[Trajectory], payloads: list[bytes], rounds: int = 5) -> dict:
    """Microseconds per message of the client's own work: encode, decode, and of decode the
    msgpack unpack alone (the rest is validation). The fastest of `rounds` passes."""

    def per_message(fn, items) -> float:
        best = math.inf
        for _ in range(rounds):
            start = time.perf_counter()
            for x in items:
                fn(x)
            best = min(best, time.perf_counter() - start)
        return best / len(items) * 1e6

    sample_msgs, sample_raw = msgs[:500], payloads[:500]
    return {
        "encode": per_message(encode, sample_msgs),
        "decode": per_message(decode, sample_raw),
        "of which msgpack unpack": per_message(msgpack.unpackb, sample_raw),
    }


def server_cpu_seconds(client) -> float:
    """The server's CPU time so far (user + system), from INFO cpu."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) * 1000 if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = parser("gpo bench transport", __doc__, 3, "runs per path; the median is reported")
    p.add_argument("--messages", type=int, default=4000, help="messages per run")
    p.add_argument("--tokens", type=int, default=2048, help="completion tokens per Trajectory")
    p.add_argument("--batch", type=int, default=64, help="messages per XADD pipeline / XREADGROUP")
    p.add_argument(
        "--adapter-mb", type=int, default=64, help="adapter size for the fetch test (MiB)"
    )
    p.add_argument("--readers", type=int, default=8, help="concurrent adapter readers")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)

    from ops.redis_server import RedisServer

    rng = np.random.default_rng(0)
    msgs = [trajectory(i, args.tokens, rng) for i in range(args.messages)]
    payloads = [encode(m) for m in msgs]
    size = len(payloads[0])
    print(
        f"Trajectory: {args.tokens} completion tokens, {size} bytes encoded; {args.messages} messages, "
        f"batch {args.batch}, median of {args.repeats} runs"
    )

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", extra=("--maxmemory", "0")).start()
        try:
            k = itertools.count()
            admin = server.client()

            def measured(run) -> tuple:
                """(msg/s, latencies, server CPU microseconds per message)."""
                before = server_cpu_seconds(admin)
                rate, lat = asyncio.run(run)
                return rate, lat, (server_cpu_seconds(admin) - before) / len(msgs) * 1e6

            cases = [
                lambda: measured(run_raw(server.url, f"r{next(k)}", payloads, args.batch)),
                lambda: measured(run_client(server.url, f"c{next(k)}", msgs, args.batch)),
                lambda: redis_benchmark(server.port, size, min(args.messages, 20000)),
                lambda: asyncio.run(adapter_fetch(server.url, args.adapter_mb, args.readers)),
            ]
            flush = lambda: server.client().flushall()  # noqa: E731
            raw_runs, client_runs, rb_runs, fetch_runs = alternate(
                cases, args.repeats, warmup=False, before_each=flush
            )
            rb = statistics.median(rb_runs) if all(rb_runs) else None
            fetch = median_fetch(fetch_runs)
            profile = codec_profile(msgs, payloads)
            profile["server CPU"] = statistics.median(r[2] for r in client_runs)
            profile["server CPU, raw redis-py's run"] = statistics.median(r[2] for r in raw_runs)
        finally:
            server.stop()

    def summary(runs):
        rate = statistics.median(r[0] for r in runs)
        lat = [x for r in runs for x in r[1]]
        return rate, pct(lat, 50), pct(lat, 99)

    c, r = summary(client_runs), summary(raw_runs)
    print()
    print(f"{'path':<34}{'msg/s':>10}{'MB/s':>9}{'p50 ms':>10}{'p99 ms':>10}")
    print(
        f"{'gpo client (encode+decode+checks)':<34}{c[0]:>10.0f}{c[0] * size / 1e6:>9.1f}{c[1]:>10.1f}{c[2]:>10.1f}"
    )
    print(
        f"{'raw redis-py (same bytes)':<34}{r[0]:>10.0f}{r[0] * size / 1e6:>9.1f}{r[1]:>10.1f}{r[2]:>10.1f}"
    )
    if rb:
        print(
            f"{'redis-benchmark XADD only, -P 64':<34}{rb:>10.0f}{rb * size / 1e6:>9.1f}{'-':>10}{'-':>10}"
        )
    print()
    print(f"client / raw throughput: {c[0] / r[0]:.2f}   (target: >= {TARGET:.2f})")
    print(f"client / raw p50 latency: {c[1] / r[1]:.2f}   p99: {c[2] / r[2]:.2f}")
    if rb:
        print(f"client / redis-benchmark XADD: {c[0] / rb:.2f}")
    print()
    per_msg = 1e6 / c[0]
    print(f"where a message's time goes (client: {per_msg:.0f} us per message end to end):")
    for name, us in profile.items():
        print(f"  {name:<34}{us:>8.1f} us")
    print()
    print(f"adapter fetch: {args.adapter_mb} MiB by {args.readers} concurrent readers")
    print(f"{'path':<20}{'seconds':>10}{'peak client buffers MiB':>26}")
    for name, (secs, peak) in fetch.items():
        print(f"{name:<20}{secs:>10.2f}{peak / 2**20:>26.1f}")
    if args.write_results:
        write_bench_section(
            "transport", argv, *results_markdown(args, size, c, r, rb, fetch, profile)
        )
    return 0


def results_markdown(
    args: argparse.Namespace,
    size: int,
    client: tuple[float, float, float],
    raw: tuple[float, float, float],
    rb: float | None,
    fetch: dict[str, tuple[float, int]],
    profile: dict[str, float] | None = None,
) -> tuple[str, str]:
    """The RESULTS.md tables and reading; `client` and `raw` are (msg/s, p50 ms, p99 ms)."""
    from ops.harness import markdown_table

    rows = [
        ["gpo client (encode, MULTI, strict decode, ack script)", *_cells(client, size), "1.00"],
        ["raw redis-py, same bytes, no decode", *_cells(raw, size), f"{client[0] / raw[0]:.2f}"],
    ]
    if rb:
        rows.append(
            [
                "redis-benchmark XADD only, -P 64",
                f"{rb:.0f}",
                f"{rb * size / 1e6:.1f}",
                "-",
                "-",
                f"{client[0] / rb:.2f}",
            ]
        )
    head = ["path", "msg/s", "MB/s", "p50 ms", "p99 ms", "gpo client / this"]
    fetch_rows = [[n, f"{s:.2f}", f"{peak / 2**20:.1f}"] for n, (s, peak) in fetch.items()]
    tables = (
        f"Trajectory of {args.tokens} completion tokens = {size} bytes encoded; "
        f"{args.messages} messages, batch {args.batch}, median of {args.repeats} alternating "
        "rounds (each: raw, client, redis-benchmark, adapter fetch).\n\n"
        + markdown_table(head, rows)
        + f"\n\nAdapter fetch, {args.adapter_mb} MiB by {args.readers} concurrent readers "
        "(median seconds, largest peak):\n\n"
        + markdown_table(["path", "seconds", "Redis peak client buffers MiB"], fetch_rows)
    )
    if profile:
        tables += (
            f"\n\nWhere a message's time goes (the client took {1e6 / client[0]:.0f} us per "
            "message end to end; codec figures are the fastest of 5 passes over 500 messages, "
            "server CPU from INFO cpu):\n\n"
            + markdown_table(
                ["part", "us per message"], [[k, f"{v:.1f}"] for k, v in profile.items()]
            )
        )
    chunked, whole = fetch.get("chunked 4 MiB"), fetch.get("single value")
    ratio = client[0] / raw[0]
    text = (
        f"The project's client moved {client[0]:.0f} Trajectory messages/s produce-to-ack, "
        f"{ratio:.2f}x the throughput of raw redis-py moving the same bytes with no encoding, "
        f"validation or ack script (the project's target is {TARGET:.2f}: "
        f"{'met' if ratio >= TARGET else 'missed in this run'}; p50 latency "
        f"{client[1] / raw[1]:.2f}x, p99 {client[2] / raw[2]:.2f}x)"
    )
    text += (
        f", and {client[0] / rb:.2f}x redis-benchmark's pipelined XADD alone, which is the "
        "server's ceiling for writes with no reader."
        if rb
        else "."
    )
    if chunked and whole:
        text += (
            f" Fetching a {args.adapter_mb} MiB adapter to {args.readers} readers took "
            f"{chunked[0]:.2f} s in 4 MiB chunks against {whole[0]:.2f} s as one value, with "
            f"{chunked[1] / 2**20:.0f} MiB against {whole[1] / 2**20:.0f} MiB peak Redis "
            "client buffers (sampled every 10 ms, so a lower bound)."
        )
        if chunked[1] < whole[1]:
            text += (
                " The chunks bound the server's reply buffers by readers x concurrency x "
                "chunk instead of readers x size."
            )
    return tables, text + " Timings on a shared 2-core machine are noisy; read the ratios."


def _cells(stats: tuple[float, float, float], size: int) -> list[str]:
    rate, p50, p99 = stats
    return [f"{rate:.0f}", f"{rate * size / 1e6:.1f}", f"{p50:.1f}", f"{p99:.1f}"]


if __name__ == "__main__":
    raise SystemExit(main())
