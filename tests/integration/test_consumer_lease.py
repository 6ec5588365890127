"""A lease ends with its block, even when the block ends while the keeper's call is in flight.

redis-py sends every command under `asyncio.wait_for`, which on Python 3.11 swallows a
cancellation that lands as the send completes. Found by RELIABILITY.md test 8 on the real
actor (tests/integration/test_system_faults.py): after a Redis pause the lease keeper's
retried call and the actor's publish returned together, the keeper missed its cancel, and
the actor waited for it forever, holding its batch.
"""

import asyncio

import pytest

from protocol.config import RedisConfig
from protocol.consumer import Consumer
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.streams import Keys, Link
from tests.support.workload import prompt


@pytest.mark.timeout(60)  # the failure is a hang: the old keeper outlived its block forever
def test_lease_ends_with_its_block_while_the_keeper_is_mid_call(redis_server):
    async def go():
        cfg = RedisConfig(url=redis_server.url, run_id="t", block_ms=100, socket_timeout=3)
        tm = TransportMetrics(Metrics("test"))
        link, keys = Link(cfg, tm), Keys("t")
        consumer = Consumer(link, keys, "in", "g", "c", cfg, tm)
        await consumer.ensure_group()
        await Producer(link, keys, cfg, tm).send("in", prompt(0))
        held = await consumer.read()
        for i in range(300):  # the keeper extends back to back: every exit lands mid-call
            async with consumer.lease(held, interval=1e-4):
                await asyncio.sleep(0.001 * (i % 3))
        assert await consumer.ack(held) == 1  # still owned: the keeper kept it leased
        await link.close()

    asyncio.run(go())
