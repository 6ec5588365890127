"""Adapter broadcast benchmark: publish + fetch through `protocol.adapters` against a memory copy.

    gpo bench broadcast [--sizes 1,16,64,256] [--readers 1,8] [--repeats 3]
                        [--concurrency 2] [--chunks-per-call 2] [--write-results]

For every adapter size (MiB) and reader count, on one private redis-server:
1. broadcast: `readers` followers, each on its own connection, block on the `weights` stream
   (`AdapterFollower.poll`), as actors and estimators do; the clock starts, the learner's
   `publish_adapter` writes the 4 MiB chunks and the pointer (and deletes the previous
   version), and every follower `fetch_adapter`s the new version from Redis (no host
   cache: each reader stands for a machine of its own), with the fetch settings given
   (`[actor.fetch]`: round trips in flight, chunk GETs per round trip) and the size,
   sha256 and layout checks. Latency: publish start -> the last reader holds verified
   bytes; each reader also checks them equal to the published bytes.
2. floor: `readers` plain in-memory copies of the same bytes, each into a fresh buffer: what
   any receiver must at least do, with no network, server or verification.
The two alternate `--repeats` times after one untimed warm-up broadcast; medians are
reported, with MB/s delivered (size x readers / latency) and the broadcast / copy ratio.
3. ceiling: `redis-benchmark` GETs of values of the chunk size (4 MiB) from as many
   clients as readers, pipelined like the fetch: the rate at which this server and loopback
   deliver such values to clients that do nothing with them.

The readers share one process and one event loop (they stand for separate processes), so
their CPU-side checks (sha256, safetensors parse) run one after another: on a 2-core
machine that also hosts redis-server this is what separate processes would get too.

Memory: a reader keeps nothing but its timing, and the chunked path means Redis answers
4 MiB values, never a whole adapter per client. Peak resident memory (VmHWM, reset per case
through /proc/<pid>/clear_refs) is reported for this process and for redis-server. Expected:
here, the interpreter's base plus about (readers + 3) x size (each reader holds the whole
adapter to verify it; the publisher holds the blob, its chunks and a parse copy); in Redis,
two versions while a publish runs plus readers x 4 GETs x 4 MiB of reply buffers.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ops.harness import alternate_async, console_table, markdown_table, parser, write_bench_section
from protocol.adapters import (
    CHUNK_BYTES,
    AdapterFollower,
    FetchConfig,
    fetch_adapter,
    publish_adapter,
)
from protocol.config import RedisConfig
from protocol.streams import Keys, Link

MiB = 2**20
DEFAULT_FETCH = FetchConfig(host_cache="off")


@dataclass(frozen=True, slots=True)
class Row:
    """Medians of one (size, readers) case."""

    size_mib: int
    readers: int
    publish_s: float
    """publish_adapter: chunks written, pointer on the stream, previous version deleted."""
    fetch_s: float
    """Slowest reader, from the pointer seen to verified bytes."""
    broadcast_s: float
    """Publish start -> the last reader holds verified bytes."""
    copy_s: float
    """`readers` in-memory copies of the same bytes (the floor)."""
    client_peak_mib: float = float("nan")
    """Peak RSS of this process (publisher and readers) during the case."""
    redis_peak_mib: float = float("nan")
    """Peak RSS of redis-server during the case."""
    ceiling_mbps: float = float("nan")
    """redis-benchmark GETs of chunk-sized values with `readers` clients, MB/s."""

    @property
    def delivered_mb(self) -> float:
        """Bytes that arrived at readers, in MB (10^6 bytes)."""
        return self.size_mib * MiB * self.readers / 1e6

    @property
    def broadcast_mbps(self) -> float:
        return self.delivered_mb / self.broadcast_s

    @property
    def copy_mbps(self) -> float:
        return self.delivered_mb / self.copy_s

    @property
    def ratio(self) -> float:
        """How many times the memory copy's time the broadcast takes (>= 1 expected)."""
        return self.broadcast_s / self.copy_s


def median_row(
    size_mib: int, readers: int, rounds: Sequence[tuple[float, float, float, float]]
) -> Row:
    """Row of per-round (publish, fetch, broadcast, copy) seconds: the median of each."""
    cols = list(zip(*rounds, strict=True))
    return Row(size_mib, readers, *(statistics.median(c) for c in cols))


HEADER = [
    "adapter MiB",
    "readers",
    "publish ms",
    "fetch ms",
    "broadcast ms",
    "MB/s",
    "memory copy ms",
    "copy MB/s",
    "broadcast / copy",
    "client peak MiB",
    "redis peak MiB",
    "GET ceiling MB/s",
    "broadcast / ceiling",
]


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    return [
        [
            str(r.size_mib),
            str(r.readers),
            f"{1e3 * r.publish_s:.1f}",
            f"{1e3 * r.fetch_s:.1f}",
            f"{1e3 * r.broadcast_s:.1f}",
            f"{r.broadcast_mbps:.0f}",
            f"{1e3 * r.copy_s:.3f}",
            f"{r.copy_mbps:.0f}",
            f"{r.ratio:.1f}x",
            f"{r.client_peak_mib:.0f}",
            f"{r.redis_peak_mib:.0f}",
            f"{r.ceiling_mbps:.0f}",
            f"{r.broadcast_mbps / r.ceiling_mbps:.0%}",
        ]
        for r in rows
    ]


def format_table(rows: Sequence[Row]) -> str:
    """Fixed-width console table of the rows."""
    return console_table(HEADER, table_rows(rows))


# --- memory high-water marks (Linux; NaN elsewhere) ------------------------------------


def peak_rss_mib(pid: int | str = "self", field: str = "VmHWM") -> float:
    """Peak resident memory of a process in MiB (`field="VmRSS"`: the current one), NaN
    when /proc does not tell."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak_rss(pid: int | str = "self") -> None:
    """Set VmHWM back to the current RSS (Linux 4.0+); silently nothing elsewhere."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


# --- one case ---------------------------------------------------------------------------


def safetensors_blob(size_mib: int, seed: int = 0) -> bytes:
    """A valid safetensors file of about `size_mib` MiB (one fp32 tensor of random values)."""
    import torch
    from safetensors.torch import save

    n = max(1, size_mib * MiB // 4)
    values = np.random.default_rng(seed).random(n, dtype=np.float32)
    return save({"lora.weight": torch.from_numpy(values)})


def memory_copies(blob: bytes, readers: int) -> float:
    """Seconds to copy `blob` into `readers` fresh buffers, one after another."""
    start = time.perf_counter()
    for _ in range(readers):
        buf = bytearray(blob)  # allocate + memcpy, as a reader's receive buffer would
        del buf
    return time.perf_counter() - start


async def _wait_blocked(admin, count: int) -> None:
    """Until `count` clients are blocked (the followers wait in XREAD BLOCK)."""
    while int((await admin.info("clients"))["blocked_clients"]) < count:
        await asyncio.sleep(0.002)


def get_ceiling(port: int, readers: int, pipeline: int, seconds: float = 2.0) -> float:
    """MB/s of redis-benchmark GETs of CHUNK_BYTES values, `readers` clients each keeping
    `pipeline` requests in flight (NaN when redis-benchmark is not installed)."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        return float("nan")
    # about `seconds` of GETs at ~1 GB/s, at least a few per client
    requests = max(8 * readers * pipeline, int(seconds * 1e9 / CHUNK_BYTES))
    out = subprocess.run(
        [exe, "-h", "127.0.0.1", "-p", str(port), "-t", "set,get", "-d", str(CHUNK_BYTES)]
        + ["-n", str(requests), "-c", str(readers), "-P", str(pipeline), "--csv"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    for row in csv.reader(out.splitlines()):
        if row and row[0] == "GET":
            return float(row[1]) * CHUNK_BYTES / 1e6
    raise RuntimeError(f"redis-benchmark printed no GET row:\n{out}")


async def broadcast_case(
    url: str, size_mib: int, readers: int, repeats: int, settings: FetchConfig = DEFAULT_FETCH
) -> tuple[list[tuple[float, float, float, float]], float]:
    """Per-round (publish, fetch, broadcast, copy) seconds, and this process's peak RSS
    during the case (MiB)."""
    reset_peak_rss()
    cfg = RedisConfig(url=url, run_id=f"b{size_mib}x{readers}", socket_timeout=120, block_ms=200)
    keys = Keys(cfg.run_id)
    blob = safetensors_blob(size_mib)
    publisher = Link(cfg)
    links = [Link(cfg) for _ in range(readers)]
    followers = [AdapterFollower(link, keys) for link in links]
    admin = Link(cfg).client

    async def one_round(version: int) -> tuple[float, float, float]:
        async def read(follower: AdapterFollower, link: Link) -> tuple[float, float]:
            pointer = None
            while pointer is None or pointer.version < version:
                pointer = await follower.poll(block_ms=10_000)
            seen = time.perf_counter()
            adapter = await fetch_adapter(
                link,
                pointer,
                concurrency=settings.concurrency,
                chunks_per_call=settings.chunks_per_call,
            )
            done = time.perf_counter()
            got = np.frombuffer(adapter.safetensors_bytes, np.uint8)  # memcmp, not per item
            if not np.array_equal(got, np.frombuffer(blob, np.uint8)):
                raise AssertionError(f"reader got different bytes for version {version}")
            return seen, done  # the verified bytes are dropped here: memory stays bounded

        tasks = [asyncio.create_task(read(f, lk)) for f, lk in zip(followers, links, strict=True)]
        await _wait_blocked(admin, readers)
        start = time.perf_counter()
        await publish_adapter(publisher, keys, version, blob, {"r": 8}, "bench", keep=1)
        published = time.perf_counter()
        times = await asyncio.gather(*tasks)
        fetch = max(done - seen for seen, done in times)
        return published - start, fetch, max(done for _, done in times) - start

    # warm-up: connections, allocator; the first poll reads the newest pointer without blocking
    await publish_adapter(publisher, keys, 1, blob, {"r": 8}, "bench", keep=1)
    for f in followers:
        await f.poll()
    versions = itertools.count(2)

    async def broadcast() -> tuple[float, float, float]:
        return await one_round(next(versions))

    async def copies() -> float:
        return memory_copies(blob, readers)

    sent, copied = await alternate_async([broadcast, copies], repeats)
    rounds = [(*b, c) for b, c in zip(sent, copied, strict=True)]
    peak = peak_rss_mib()
    await admin.aclose()
    for link in [publisher, *links]:
        await link.close()
    return rounds, peak


def run(
    url: str,
    sizes: Sequence[int],
    readers: Sequence[int],
    repeats: int,
    redis_pid: int | None,
    fetch: FetchConfig = DEFAULT_FETCH,
    port: int | None = None,
) -> list[Row]:
    rows = []
    ceilings = {}
    for size in sizes:
        for n in readers:
            if redis_pid is not None:
                reset_peak_rss(redis_pid)
            rounds, client_peak = asyncio.run(broadcast_case(url, size, n, repeats, fetch))
            redis_peak = peak_rss_mib(redis_pid) if redis_pid is not None else float("nan")
            if n not in ceilings:
                ceilings[n] = get_ceiling(port, n, fetch.chunks_per_call) if port else float("nan")
            row = median_row(size, n, rounds)
            rows.append(
                Row(
                    **{
                        **_fields(row),
                        "client_peak_mib": client_peak,
                        "redis_peak_mib": redis_peak,
                        "ceiling_mbps": ceilings[n],
                    }
                )
            )
            print(format_table(rows[-1:]).splitlines()[1], flush=True)
    return rows


def _fields(row: Row) -> dict:
    return {k: getattr(row, k) for k in Row.__slots__}


def reading(rows: Sequence[Row], base_mib: float) -> str:
    """One paragraph on the measured rows (the figures, not a verdict written in advance)."""
    big = max(rows, key=lambda r: (r.size_mib, r.readers))
    one = [r for r in rows if r.readers == 1]
    parts = [
        f"Broadcasting a {big.size_mib} MiB adapter to {big.readers} reader(s) took "
        f"{big.broadcast_s:.2f} s ({big.broadcast_mbps:.0f} MB/s delivered), "
        f"{big.ratio:.0f}x the time of {big.readers} plain memory copies of the same bytes "
        f"({big.copy_mbps:.0f} MB/s)."
    ]
    if big.ceiling_mbps == big.ceiling_mbps:  # not NaN
        parts.append(
            f"redis-benchmark GETs of the same {CHUNK_BYTES // MiB} MiB chunks from "
            f"{big.readers} client(s) moved {big.ceiling_mbps:.0f} MB/s: the broadcast "
            f"delivered {big.broadcast_mbps / big.ceiling_mbps:.0%} of what this server and "
            "loopback give clients that do nothing with the bytes (and it also publishes, "
            "hashes and checks them)."
        )
    if one:
        lo, hi = min(r.ratio for r in one), max(r.ratio for r in one)
        parts.append(
            f"To one reader the broadcast costs {lo:.0f}x to {hi:.0f}x a memory copy over the "
            "sizes measured: every byte goes through a socket twice (publish, fetch), is "
            "received by redis-py into a chunk object, copied once into the reader's "
            "buffer and hashed (sha256) before a reader may load it."
        )
    pairs = [
        (a, b)
        for a in rows
        for b in rows
        if a.size_mib == b.size_mib and a.readers == 1 and b.readers > 1
    ]
    if pairs:
        scale = [b.broadcast_s / a.broadcast_s for a, b in pairs]
        n = pairs[0][1].readers
        parts.append(
            f"{n} readers took {min(scale):.1f}x to {max(scale):.1f}x the one-reader latency "
            f"({n}x would mean no overlap at all; the readers share one event loop, and two "
            "cores with redis-server, so their socket reads, copies and checks take turns on "
            "one core)."
        )
    if big.client_peak_mib == big.client_peak_mib:  # not NaN
        chunk_mib = CHUNK_BYTES / MiB
        parts.append(
            f"Memory at {big.size_mib} MiB x {big.readers} readers: this process (publisher "
            f"and all readers) peaked at {big.client_peak_mib:.0f} MiB resident, "
            f"{big.client_peak_mib - base_mib:.0f} MiB above its {base_mib:.0f} MiB before the "
            f"first case, against about (readers + 3) x size = "
            f"{(big.readers + 3) * big.size_mib} MiB (every reader holds the whole adapter to "
            f"verify it); redis-server peaked at {big.redis_peak_mib:.0f} MiB resident, for two "
            f"versions of chunks while a publish runs and up to readers x 4 replies of "
            f"{chunk_mib:.0f} MiB in flight ({2 * big.size_mib + big.readers * 4 * chunk_mib:.0f}"
            " MiB; its RSS also keeps memory that jemalloc has not returned since earlier cases)."
        )
        solo = [r for r in rows if r.size_mib == big.size_mib and r.readers == 1]
        if solo and big.readers > 1:
            grow = big.redis_peak_mib - solo[0].redis_peak_mib
            parts.append(
                f"From 1 to {big.readers} readers Redis grew by {grow:.0f} MiB, against "
                f"{(big.readers - 1) * big.size_mib} MiB if every extra reader's whole adapter "
                "sat in an output buffer, as with one unchunked value."
            )
    parts.append(
        "Timings on a shared 2-core machine are noisy; the ratios come from alternating "
        "rounds in one run."
    )
    return " ".join(parts)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("gpo bench broadcast", __doc__, repeats=3)
    p.add_argument("--sizes", type=_ints, default=[1, 16, 64, 256], help="adapter MiB, commas")
    p.add_argument("--readers", type=_ints, default=[1, 8], help="reader counts, commas")
    default = FetchConfig()
    p.add_argument(
        "--concurrency", type=int, default=default.concurrency, help="round trips in flight"
    )
    p.add_argument(
        "--chunks-per-call",
        type=int,
        default=default.chunks_per_call,
        help="chunk GETs pipelined in one round trip",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)

    from ops.redis_server import RedisServer

    try:
        fetch = FetchConfig(args.concurrency, args.chunks_per_call, host_cache="off")
    except ValueError as e:
        p.error(str(e))
    print(
        f"adapter broadcast: sizes {args.sizes} MiB, readers {args.readers}, "
        f"{fetch.concurrency} round trips of {fetch.chunks_per_call} chunk GETs in flight "
        f"per reader, median of {args.repeats} alternating rounds\n"
    )
    base_mib = peak_rss_mib(field="VmRSS")
    print(format_table([]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", extra=("--maxmemory", "0")).start()
        try:
            assert server.proc is not None
            rows = run(
                server.url,
                args.sizes,
                args.readers,
                args.repeats,
                server.proc.pid,
                fetch,
                server.port,
            )
        finally:
            server.stop()
    text = reading(rows, base_mib)
    print("\n" + text)
    if args.write_results:
        write_bench_section("broadcast", argv, markdown_table(HEADER, table_rows(rows)), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
