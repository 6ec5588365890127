"""Redis memory stays bounded: consumers trim what every group acknowledged, dead-letter
streams are capped, and a Redis at `maxmemory` is backpressure, not a crash (real
redis-server, in-process clients)."""

from __future__ import annotations

import asyncio
import time

from protocol.codec import decode
from protocol.config import RedisConfig
from protocol.consumer import Consumer
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.streams import Keys, Link
from tests.support.workload import prompt

KEYS = Keys("t")


def parts(url, **fields):
    cfg = RedisConfig(url=url, run_id="t", block_ms=200, socket_timeout=3, **fields)
    tm = TransportMetrics(Metrics("test"))
    return cfg, tm, Link(cfg, tm)


def test_consumers_trim_what_every_group_acked_and_keep_the_rest(redis_server):
    check_trim(redis_server.url, redis_server.client())


def check_trim(url: str, r) -> None:
    """60 entries, 50 read and acked in batches of 10 with a trim at every ack: the stream
    keeps the 5 still pending and the 5 never delivered, nothing else (also on a cluster:
    tests/integration/test_redis_cluster.py)."""

    async def go():
        cfg, tm, link = parts(url, trim_interval=0.001, batch_size=10)
        prod = Producer(link, KEYS, cfg, tm)
        cons = Consumer(link, KEYS, "in", "g", "c", cfg, tm)
        await cons.ensure_group()
        await prod.send("in", [prompt(i) for i in range(60)])
        for _ in range(5):
            await asyncio.sleep(0.002)
            await cons.ack(await cons.read())
        held = await cons.read(count=5)  # delivered, pending: never trimmed
        await asyncio.sleep(0.002)
        await cons.ack([])  # nothing to ack: no trim either
        trimmed = tm.trimmed.labels("in")._value.get()
        await link.close()
        return held, trimmed

    held, trimmed = asyncio.run(go())
    left = [decode(f[b"m"]).id for _, f in r.xrange(KEYS.stream("in"))]
    assert left == [f"p{i}" for i in range(50, 60)] and len(held) == 5
    assert trimmed == 50
    assert int(r.get(KEYS.produced("in"))) == 60 and int(r.get(KEYS.acked("in"))) == 50


def test_trim_interval_zero_keeps_every_entry(redis_server):
    r = redis_server.client()

    async def go():
        cfg, tm, link = parts(redis_server.url, trim_interval=0, batch_size=10)
        prod = Producer(link, KEYS, cfg, tm)
        cons = Consumer(link, KEYS, "in", "g", "c", cfg, tm)
        await cons.ensure_group()
        await prod.send("in", [prompt(i) for i in range(20)])
        await cons.ack(await cons.read())
        await cons.ack(await cons.read())
        await link.close()

    asyncio.run(go())
    assert r.xlen(KEYS.stream("in")) == 20


def test_dead_letter_streams_keep_the_newest_up_to_their_cap(redis_server):
    r = redis_server.client()

    async def go():
        cfg, tm, link = parts(redis_server.url, dead_letter_maxlen=3)
        cons = Consumer(link, KEYS, "in", "g", "c", cfg, tm)
        await cons.ensure_group()
        for i in range(5):
            r.xadd(KEYS.stream("in"), {"m": b"\xc1 not msgpack " + bytes([i])})
        while await cons.read():
            pass
        await link.close()
        return sum(
            m.value
            for family in tm.dead_lettered.collect()
            for m in family.samples
            if m.name.endswith("_total") and m.labels["stream"] == "in"
        )

    counted = asyncio.run(go())
    dead = r.xrange(KEYS.dead("in"))
    assert counted == 5 and len(dead) == 3  # the metric counts all, the stream keeps 3
    assert [f[b"raw"][-1] for _, f in dead] == [2, 3, 4]  # the newest


def test_a_redis_at_maxmemory_holds_writes_back_until_memory_frees(redis_server):
    """Redis at maxmemory refuses the producer's XADDs (OOM). The send waits, counted
    and logged once, while an ack still goes through; once a big value is deleted, the send
    completes, and its entries are written exactly once."""
    r = redis_server.client()
    r.mset({f"ballast:{i}": b"x" * 2**17 for i in range(64)})  # 8 MiB
    time.sleep(1.0)  # the server shrinks the query buffer that carried it (serverCron)
    r.config_set("maxmemory", str(int(r.info("memory")["used_memory"]) - 2**20))
    r.config_set("maxmemory-policy", "noeviction")

    async def go():
        cfg, tm, link = parts(redis_server.url)
        prod = Producer(link, KEYS, cfg, tm)
        send = asyncio.create_task(prod.send("in", [prompt(i) for i in range(3)], wait=False))
        await asyncio.sleep(1.5)
        waited = tm.oom_waits._value.get()
        blocked = not send.done()
        r.delete(*[f"ballast:{i}" for i in range(64)])  # DEL is never refused
        ids = await asyncio.wait_for(send, 10)
        await link.close()
        return waited, blocked, ids

    waited, blocked, ids = asyncio.run(go())
    assert blocked and waited >= 2, waited
    assert len(ids) == 3 and r.xlen(KEYS.stream("in")) == 3
    assert int(r.get(KEYS.produced("in"))) == 3


def test_at_maxmemory_a_process_trims_what_was_acked_so_its_write_goes_through(redis_server):
    """Every process may wait on a write at once (an actor on its trajectories, the learner
    on its adapter): no ack comes, so no trim follows one. A Redis full of acknowledged but
    untrimmed entries then deadlocks the run unless a refused write trims first: here the
    consumer acked 400 big entries with its periodic trim far away, and the producer's
    next send must go through on its own."""
    r = redis_server.client()

    async def go():
        cfg, tm, link = parts(redis_server.url, trim_interval=3600.0)
        prod = Producer(link, KEYS, cfg, tm)
        cons = Consumer(link, KEYS, "in", "g", "c", cfg, tm)
        await cons.ensure_group()
        for k in range(4):
            await prod.send("in", [prompt(100 * k + i, text="x" * 4096) for i in range(100)])
            await cons.ack(await cons.read(count=100))
        r.config_set("maxmemory", str(int(r.info("memory")["used_memory"]) - 2**19))
        r.config_set("maxmemory-policy", "noeviction")
        ids = await asyncio.wait_for(prod.send("in", prompt(999, text="x" * 4096)), 10)
        await link.close()
        return ids, tm.oom_waits._value.get()

    ids, waited = asyncio.run(go())
    assert len(ids) == 1 and waited >= 1  # refused once, then relieved by the trim
    assert r.xlen(KEYS.stream("in")) == 1  # the 400 acked entries went
