"""The chaos soak's audit (ops/bench/chaos_audit.py) against a real redis-server: the streams are
trimmed while workers consume, and the ledger still gets every entry back."""

from __future__ import annotations

import asyncio

from ops.bench.chaos_audit import AUDIT_GROUP, Auditor
from ops.ledger import dump_stream
from protocol.config import RedisConfig
from protocol.consumer import Consumer
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.streams import GROUPS, PROMPTS, Keys, Link
from tests.support.waits import poll
from tests.support.workload import prompt


def test_trimmed_entries_come_back_from_the_audit_and_memory_is_sampled(redis_server):
    keys = Keys("t")
    auditor = Auditor(redis_server.client, keys)
    auditor.start()  # before anything is written, as the soak does before the workers

    async def work():
        cfg = RedisConfig(url=redis_server.url, run_id="t", block_ms=100, socket_timeout=3)
        tm = TransportMetrics(Metrics("test"))
        link = Link(cfg, tm)
        consumer = Consumer(link, keys, PROMPTS, GROUPS[PROMPTS], "c", cfg, tm)
        await consumer.ensure_group()
        producer = Producer(link, keys, cfg, tm)
        for round_ in range(3):
            await producer.send(PROMPTS, [prompt(10 * round_ + i) for i in range(10)])
            got = await consumer.read(count=10)
            await consumer.ack(got)
            # the trim waits for the audit group: once it has copied, the entries go
            assert poll(lambda n=10 * (round_ + 1): len(auditor.entries[PROMPTS]) == n, 10)
            await asyncio.sleep(0.3)  # the audit acks after copying
            await consumer.trim()
        await link.close()

    asyncio.run(work())
    r = redis_server.client()
    assert r.xlen(keys.stream(PROMPTS)) == 0  # every entry trimmed
    auditor.stop()
    dump = auditor.merged(PROMPTS, dump_stream(r, keys, PROMPTS))
    assert len(dump.entries) == 30 and dump.pending == set()
    assert [eid for eid, _ in dump.entries] == sorted(auditor.entries[PROMPTS], key=_order)
    assert auditor.memory.samples and auditor.memory.samples[0][1] > 0


def test_a_trim_never_passes_what_the_audit_has_not_copied(redis_server):
    keys = Keys("t")
    r = redis_server.client()
    Auditor(redis_server.client, keys).ensure_groups(r)  # the group, nobody copying yet

    async def work():
        cfg = RedisConfig(url=redis_server.url, run_id="t", block_ms=100, socket_timeout=3)
        tm = TransportMetrics(Metrics("test"))
        link = Link(cfg, tm)
        consumer = Consumer(link, keys, PROMPTS, GROUPS[PROMPTS], "c", cfg, tm)
        await consumer.ensure_group()
        await Producer(link, keys, cfg, tm).send(PROMPTS, [prompt(i) for i in range(5)])
        await consumer.ack(await consumer.read(count=5))
        trimmed = await consumer.trim()
        await link.close()
        return trimmed

    assert asyncio.run(work()) == 0 and r.xlen(keys.stream(PROMPTS)) == 5


def test_a_lost_audit_group_is_made_again_and_reads_from_the_start(redis_server):
    keys = Keys("t")
    r = redis_server.client()
    auditor = Auditor(redis_server.client, keys)
    auditor.start()
    r.xadd(keys.stream(PROMPTS), {b"m": b"one"})
    assert poll(lambda: len(auditor.entries[PROMPTS]) == 1, 10)
    r.xgroup_destroy(keys.stream(PROMPTS), AUDIT_GROUP)  # as a Redis restart may lose it
    r.xadd(keys.stream(PROMPTS), {b"m": b"two"})
    assert poll(lambda: len(auditor.entries[PROMPTS]) == 2, 10)
    auditor.stop()
    assert sorted(auditor.entries[PROMPTS].values()) == [b"one", b"two"]


def _order(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq)
