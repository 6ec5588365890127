"""The pending check counts a delivery only for what it hands out again.

Found by the chaos soak (`gpo bench chaos`): the learner holds its buffered samples pending
across many pending checks; if each check counted a delivery, a `kill -9` of the learner
would dead-letter samples that were delivered once, as `max_deliveries` exceeded.
"""

import asyncio

from protocol.config import RedisConfig
from protocol.consumer import Consumer
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.streams import Keys, Link
from tests.support.workload import prompt


def test_held_entry_survives_pending_checks_and_a_restart(redis_server):
    async def go():
        cfg = RedisConfig(
            url=redis_server.url,
            run_id="t",
            block_ms=100,
            socket_timeout=3,
            claim_idle=30,
            pending_check_interval=0.1,
            max_deliveries=2,
        )
        tm = TransportMetrics(Metrics("test"))
        link, keys = Link(cfg, tm), Keys("t")
        held = Consumer(link, keys, "in", "g", "c", cfg, tm)
        await held.ensure_group()
        await Producer(link, keys, cfg, tm).send("in", [prompt(0), prompt(1)])
        first = await held.read()
        assert [d.message.id for d in first] == ["p0", "p1"]
        await held.ack(first[1:])  # p1 done; p0 stays held (a learner's buffer)
        for _ in range(5):  # five pending checks while p0 is held
            await asyncio.sleep(0.15)
            assert await held.read(block_ms=50) == []
        r = redis_server.client()
        (entry,) = r.xpending_range(keys.stream("in"), "g", "-", "+", 10)
        assert entry["times_delivered"] == 1
        # the process dies; its successor (same consumer name) gets p0 back, once more
        restarted = Consumer(link, keys, "in", "g", "c", cfg, tm)
        (again,) = await restarted.read()
        assert again.message.id == "p0" and again.deliveries == 2
        assert r.xlen(keys.dead("in")) == 0
        # a read whose reply was lost (pending, never seen by this process) is recovered too
        await Producer(link, keys, cfg, tm).send("in", prompt(2))
        r.xreadgroup("g", "c", {keys.stream("in"): ">"})
        await asyncio.sleep(0.15)
        (hidden,) = await restarted.read(block_ms=50)
        assert hidden.message.id == "p2" and hidden.deliveries == 2
        await link.close()

    asyncio.run(go())


def test_redeliveries_go_out_one_at_a_time_and_waiting_ones_count_nothing(redis_server):
    """A batching consumer killed holding three entries gets them back one per read, and
    each delivery is counted only when it is handed out (RELIABILITY.md test 10: a message
    that kills its consumer must not drag the others to max_deliveries with it)."""

    async def go():
        cfg = RedisConfig(
            url=redis_server.url,
            run_id="t",
            block_ms=100,
            socket_timeout=3,
            claim_idle=30,
            pending_check_interval=0.1,
            max_deliveries=2,
        )
        tm = TransportMetrics(Metrics("test"))
        link, keys = Link(cfg, tm), Keys("t")
        first = Consumer(link, keys, "in", "g", "c", cfg, tm)
        await first.ensure_group()
        await Producer(link, keys, cfg, tm).send("in", [prompt(i) for i in range(3)])
        assert len(await first.read(count=10)) == 3  # then the process dies holding them
        again = Consumer(link, keys, "in", "g", "c", cfg, tm)
        (d0,) = await again.read(count=10)
        assert (d0.message.id, d0.deliveries) == ("p0", 2)
        r = redis_server.client()
        counts = {
            p["message_id"]: p["times_delivered"]
            for p in r.xpending_range(keys.stream("in"), "g", "-", "+", 10)
        }
        assert sorted(counts.values()) == [1, 1, 2]  # p1 and p2 wait, uncounted
        (d1,) = await again.read(count=10)
        assert (d1.message.id, d1.deliveries) == ("p1", 2)
        assert await again.read_new(count=10) == []  # only new entries asked for
        (d2,) = await again.read(count=10)
        assert (d2.message.id, d2.deliveries) == ("p2", 2)
        await link.close()

    asyncio.run(go())
