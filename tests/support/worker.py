"""A small real consumer process for the transport fault tests (actors come later).

It reads Prompt messages from stream `in` (group `workers`) and, for each, writes an output
Prompt with the SAME id to stream `out` (no group: the test's ledger reads all of it), then
acks. Knobs make it slow (`--hold`), heartbeat its lease while slow, fail on poison texts,
or exit on SIGTERM after handing back its work. It prints `ready` once its group exists.

    python -m tests.support.worker --url URL --run R --name N [--hold S] [--heartbeat] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
import time

from protocol.config import RedisConfig
from protocol.consumer import Consumer
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.streams import Keys, Link, RedisFatalError, run_async


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--run", default="t")
    p.add_argument("--name", required=True)
    p.add_argument("--hold", type=float, default=0.0, help="seconds to work on each message")
    p.add_argument("--heartbeat", action="store_true", help="extend the lease while holding")
    p.add_argument(
        "--poison", default="POISON", help="texts containing this make the handler raise"
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--block-ms", type=int, default=500)
    p.add_argument("--socket-timeout", type=float, default=3.0)
    p.add_argument("--claim-idle", type=float, default=2.0)
    p.add_argument("--pending-check", type=float, default=0.5)
    p.add_argument("--max-deliveries", type=int, default=3)
    p.add_argument("--metrics-port", type=int, default=0)
    p.add_argument(
        "--max-idle", type=float, default=600.0, help="exit 0 after this long without work"
    )
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    p.add_argument("--tls-ca", default=None)
    p.add_argument(
        "--trim-every", type=float, default=0.0, help="seconds between XTRIM MINID sweeps"
    )
    return p.parse_args(argv)


async def main(args: argparse.Namespace) -> int:
    cfg = RedisConfig(
        url=args.url,
        run_id=args.run,
        block_ms=args.block_ms,
        socket_timeout=args.socket_timeout,
        claim_idle=args.claim_idle,
        pending_check_interval=args.pending_check,
        max_deliveries=args.max_deliveries,
        batch_size=args.batch,
        reconnect_backoff_max=1.0,
        tls_ca_file=args.tls_ca,
        trim_interval=0,  # trimmed only with --trim-every, and by this worker itself
    )
    metrics = Metrics("worker")
    tm = TransportMetrics(metrics)
    port = metrics.serve(args.metrics_port, host="127.0.0.1")
    link = Link(cfg, tm)
    try:
        await link.connect()
    except RedisFatalError as e:
        print(f"error: {e}", flush=True)
        return 2
    keys = Keys(cfg.run_id)
    consumer = Consumer(link, keys, "in", "workers", args.name, cfg, tm)
    producer = Producer(link, keys, cfg, tm)
    await consumer.ensure_group()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"ready metrics={port}", flush=True)

    last_work = last_trim = time.monotonic()
    while not stop.is_set() and time.monotonic() - last_work < args.max_idle:
        batch = await consumer.read()
        if batch:
            last_work = time.monotonic()
        for d in batch:
            if stop.is_set():
                break  # not acked: stays pending for the next consumer of this name or a claim
            try:
                if args.poison in d.message.text:
                    raise ValueError(f"poison message {d.message.id}")
                if args.hold:
                    await hold(consumer, d, args.hold, args.heartbeat, stop)
                    if stop.is_set():
                        break
                if not await consumer.extend_lease([d]):
                    continue  # taken over while we worked (we were a zombie): drop our output
                out = dataclasses.replace(d.message, text=f"{args.name}:{d.message.text}")
                await producer.send("out", out, wait=False)
            except ValueError as e:
                consumer.release(d, e)
                continue
            await consumer.ack([d])
        if args.trim_every and time.monotonic() - last_trim > args.trim_every:
            await consumer.trim()
            last_trim = time.monotonic()
    await link.close()
    metrics.close()
    return 0


async def hold(consumer: Consumer, d, seconds: float, heartbeat: bool, stop: asyncio.Event) -> None:
    """Work for `seconds` (interruptible by SIGTERM), keeping the lease when asked."""
    if heartbeat:
        async with consumer.lease([d], interval=consumer.cfg.claim_idle / 4):
            await _wait(stop, seconds)
    else:
        await _wait(stop, seconds)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    a = parse(sys.argv[1:])
    sys.exit(run_async(main(a), use_uvloop=a.loop == "uvloop"))
