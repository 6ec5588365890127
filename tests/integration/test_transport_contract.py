"""The transport's contract, run on the real consumer and producer (a redis-server) and on
the in-memory fake the loop unit tests use (tests/support/memory_transport.py): the fake is
only as good as these scenarios say, each run on both."""

from __future__ import annotations

import asyncio

import pytest

from protocol.config import RedisConfig
from protocol.consumer import Consumer
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.streams import PROMPTS, Keys, Link
from tests.support.memory_transport import MemoryConsumer, MemoryProducer, MemoryRedis
from tests.support.workload import prompt

CLAIM_IDLE = 0.3


def config(url: str = "redis://127.0.0.1:1") -> RedisConfig:
    return RedisConfig(
        url=url,
        run_id="t",
        block_ms=50,
        socket_timeout=3,
        claim_idle=CLAIM_IDLE,
        pending_check_interval=0.05,
        max_deliveries=2,
        trim_interval=0,
    )


class RedisSide:
    def __init__(self, server):
        self.cfg = config(server.url)
        self.tm = TransportMetrics(Metrics("test"))
        self.link, self.keys, self.client = Link(self.cfg, self.tm), Keys("t"), server.client()

    def consumer(self, name: str) -> Consumer:
        return Consumer(self.link, self.keys, PROMPTS, "g", name, self.cfg, self.tm)

    def producer(self) -> Producer:
        return Producer(self.link, self.keys, self.cfg, self.tm)

    def dead(self) -> list[str]:
        return [f[b"reason"].decode() for _, f in self.client.xrange(self.keys.dead(PROMPTS))]

    def length(self) -> int:
        return self.client.xlen(self.keys.stream(PROMPTS))

    async def close(self) -> None:
        await self.link.close()


class MemorySide:
    def __init__(self):
        self.cfg, self.redis = config(), MemoryRedis()

    def consumer(self, name: str) -> MemoryConsumer:
        return MemoryConsumer(self.redis, PROMPTS, "g", name, self.cfg)

    def producer(self) -> MemoryProducer:
        return MemoryProducer(self.redis, self.cfg)

    def dead(self) -> list[str]:
        return [d["reason"] for d in self.redis.stream(PROMPTS).dead]

    def length(self) -> int:
        return len(self.redis.stream(PROMPTS).entries)

    async def close(self) -> None:
        pass


@pytest.fixture(params=["redis", "memory"])
def side(request):
    if request.param == "memory":
        return MemorySide()
    return RedisSide(request.getfixturevalue("redis_server"))


def run(side, scenario) -> None:
    async def go():
        try:
            await scenario()
        finally:
            await side.close()

    asyncio.run(go())


async def started(side, name: str = "c"):
    c = side.consumer(name)
    await c.ensure_group()
    return c


def ids(deliveries) -> list[tuple[str, int]]:
    return [(d.message.id, d.deliveries) for d in deliveries]


def test_reads_in_order_acks_and_counts_the_backlog(side):
    async def scenario():
        c = await started(side)
        await side.producer().send(PROMPTS, [prompt(i) for i in range(5)])
        first = await c.read(count=3)
        assert ids(first) == [("p0", 1), ("p1", 1), ("p2", 1)]
        assert await c.ack(first[:2]) == 2
        assert await c.backlog() == 3 and await side.producer().backlog(PROMPTS) == 3
        assert ids(await c.read(count=5)) == [("p3", 1), ("p4", 1)]

    run(side, scenario)


def test_a_restart_takes_its_pending_back_one_per_read_counting_one_delivery(side):
    async def scenario():
        dead = await started(side)
        await side.producer().send(PROMPTS, [prompt(i) for i in range(3)])
        await dead.read(count=3)
        again = side.consumer("c")  # the same name, a new process
        got = [ids(await again.read(count=3)) for _ in range(3)]
        assert got == [[("p0", 2)], [("p1", 2)], [("p2", 2)]]
        assert await again.read(count=3) == []

    run(side, scenario)


def test_idle_entries_are_claimed_then_dead_lettered_past_max_deliveries(side):
    async def scenario():
        a, b, c = await started(side, "a"), side.consumer("b"), side.consumer("c")
        await side.producer().send(PROMPTS, prompt(0))
        assert ids(await a.read()) == [("p0", 1)]
        assert await b.read() == []  # not idle yet
        await asyncio.sleep(CLAIM_IDLE + 0.1)
        (taken,) = await b.read()
        assert (taken.message.id, taken.deliveries) == ("p0", 2)
        assert await a.ack([taken.entry_id]) == 0  # a lost it: its late ack does nothing
        await asyncio.sleep(CLAIM_IDLE + 0.1)
        assert await c.read() == []  # a third delivery is past max_deliveries = 2
        assert len(side.dead()) == 1 and side.dead()[0].startswith("max_deliveries")
        assert await b.ack([taken]) == 0

    run(side, scenario)


def test_a_lease_keeps_an_entry_from_being_claimed(side):
    async def scenario():
        a, b = await started(side, "a"), side.consumer("b")
        await side.producer().send(PROMPTS, prompt(0))
        (held,) = await a.read()
        for _ in range(4):
            await asyncio.sleep(CLAIM_IDLE / 2)
            assert await a.extend_lease([held]) == [held.entry_id]
            assert await b.read() == []
        assert await a.ack([held]) == 1

    run(side, scenario)


def test_undecodable_entries_and_dead_letters_go_to_the_dead_stream(side):
    async def scenario():
        c = await started(side)
        await side.producer().send_raw(PROMPTS, [b"\xc1junk"])
        await side.producer().send(PROMPTS, prompt(1))
        (ok,) = await c.read(count=5)
        assert ok.message.id == "p1" and side.dead()[0].startswith("decode:")
        assert await c.dead_letter(ok.entry_id, b"raw", "handler: gave up")
        assert side.dead()[1] == "handler: gave up" and await c.ack([ok]) == 0
        assert await c.backlog() == 0

    run(side, scenario)


def test_take_back_claims_the_named_entries_first(side):
    async def scenario():
        a, b = await started(side, "a"), side.consumer("b")
        await side.producer().send(PROMPTS, [prompt(i) for i in range(3)])
        held = await a.read(count=3)
        await a.ack(held[1:2])  # acked before the take-back: skipped
        back = await b.take_back([held[2].entry_id, held[1].entry_id, held[0].entry_id])
        assert ids(back) == [("p2", 2), ("p0", 2)]
        assert await b.take_back([held[2].entry_id]) == []  # held here already

    run(side, scenario)


def test_a_trim_never_passes_a_pending_entry(side):
    async def scenario():
        c = await started(side)
        await side.producer().send(PROMPTS, [prompt(i) for i in range(4)])
        got = await c.read(count=4)
        await c.ack([got[0], got[2]])
        assert await c.trim() == 1 and side.length() == 3  # p1 is pending: p2 stays too
        await c.ack([got[1], got[3]])
        assert await c.trim() == 3 and side.length() == 0

    run(side, scenario)
