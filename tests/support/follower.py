"""A small adapter-following process for the broadcast tests (actors come later).

Polls the `weights` stream, fetches and verifies each newer version (through a host cache
with `--cache DIR`), and prints one line per outcome: `loaded <version> <sum of all weights>`
or `rejected <version> <reason>`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from safetensors.torch import load

from protocol.adapter_cache import HostCache
from protocol.adapters import AdapterFollower, AdapterMetrics, AdapterRejected, fetch_adapter
from protocol.config import RedisConfig
from protocol.metrics import Metrics, TransportMetrics
from protocol.streams import Keys, Link, run_async


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--run", default="t")
    p.add_argument("--cache", default="off", help="host cache directory (default: none)")
    args = p.parse_args(argv)
    cfg = RedisConfig(url=args.url, run_id=args.run, socket_timeout=3, block_ms=500)
    metrics = Metrics("follower")
    link = Link(cfg, TransportMetrics(metrics))
    await link.connect()
    am = AdapterMetrics(metrics)
    follower = AdapterFollower(link, Keys(args.run))
    cache = HostCache.for_run(args.cache, args.url, args.run)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    while not stop.is_set():
        pointer = await follower.poll(block_ms=300)
        if pointer is None:
            continue
        try:
            adapter = await fetch_adapter(link, pointer, concurrency=2, cache=cache, metrics=am)
        except AdapterRejected as e:
            print(f"rejected {pointer.version} {e.reason}", flush=True)
            continue
        total = sum(float(t.sum()) for t in load(bytes(adapter.safetensors_bytes)).values())
        print(f"loaded {pointer.version} {total:.1f}", flush=True)
    await link.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_async(main(sys.argv[1:])))
