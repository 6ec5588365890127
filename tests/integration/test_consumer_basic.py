"""The consumer loop against a real redis-server, in-process: ack, counters, dead letters."""

import asyncio
import time

import pytest

from protocol.codec import encode
from protocol.config import RedisConfig
from protocol.consumer import Consumer
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.streams import Keys, Link, LinkClosed
from tests.support.workload import prompt


def parts(url, **cfg):
    cfg = RedisConfig(
        url=url,
        run_id="t",
        block_ms=200,
        socket_timeout=3,
        claim_idle=0.5,
        pending_check_interval=0.2,
        max_deliveries=2,
        **cfg,
    )
    tm = TransportMetrics(Metrics("test"))
    link = Link(cfg, tm)
    return cfg, tm, link, Keys("t")


def test_produce_read_ack_backlog(redis_server):
    async def go():
        cfg, tm, link, keys = parts(redis_server.url)
        prod = Producer(link, keys, cfg, tm)
        cons = Consumer(link, keys, "in", "g", "c1", cfg, tm)
        await cons.ensure_group()
        await cons.ensure_group()  # idempotent
        await prod.send("in", [prompt(i) for i in range(5)])
        assert await prod.backlog("in") == 5
        batch = await cons.read()
        assert [d.message.id for d in batch] == [f"p{i}" for i in range(5)]
        assert all(d.deliveries == 1 for d in batch)
        assert await cons.ack(batch[:3]) == 3
        assert await prod.backlog("in") == 2
        assert await cons.ack(batch[:3]) == 0  # second ack of the same entries: nothing
        assert await prod.backlog("in") == 2
        await link.close()

    asyncio.run(go())


def test_other_consumer_cannot_ack_and_lease_moves(redis_server):
    async def go():
        cfg, tm, link, keys = parts(redis_server.url)
        prod = Producer(link, keys, cfg, tm)
        a = Consumer(link, keys, "in", "g", "a", cfg, tm)
        b = Consumer(link, keys, "in", "g", "b", cfg, tm)
        await a.ensure_group()
        await prod.send("in", prompt(0))
        (d,) = await a.read()
        await asyncio.sleep(0.7)  # past claim_idle
        b._next_pending_check = 0
        (d2,) = await b.read()
        assert d2.message.id == "p0" and d2.deliveries == 2
        assert await a.extend_lease([d]) == []  # a lost it
        assert await a.ack([d]) == 0  # zombie ack refused
        assert await b.ack([d2]) == 1
        await link.close()

    asyncio.run(go())


def test_decode_failure_goes_to_dead_stream_at_once(redis_server):
    async def go():
        cfg, tm, link, keys = parts(redis_server.url)
        prod = Producer(link, keys, cfg, tm)
        cons = Consumer(link, keys, "in", "g", "c", cfg, tm)
        await cons.ensure_group()
        await prod.send_raw("in", [b"\xc1garbage", encode(prompt(1))])
        batch = await cons.read()
        assert [d.message.id for d in batch] == ["p1"]
        r = redis_server.client()
        dead = r.xrange(keys.dead("in"))
        assert len(dead) == 1
        assert dead[0][1][b"raw"] == b"\xc1garbage"
        assert dead[0][1][b"reason"].startswith(b"decode:")
        assert r.xpending(keys.stream("in"), "g")["pending"] == 1  # only p1, unacked
        await link.close()

    asyncio.run(go())


@pytest.mark.parametrize("bad", [{"block_ms": 9000}, {"run_id": "a:b"}, {"url": "http://x"}])
def test_config_rejects_bad_values(bad):
    from protocol.config import ConfigError

    with pytest.raises(ConfigError):
        RedisConfig(**{"socket_timeout": 10.0, **bad})


def test_a_stopping_link_finishes_what_redis_answers_and_gives_up_on_what_it_does_not(
    redis_server,
):
    """After SIGTERM the grace bounds waiting for a Redis that does not answer; it must not
    refuse calls Redis answers (a learner update that outlasts the grace still commits)."""

    async def go():
        _, _, link, _ = parts(redis_server.url, reconnect_backoff_max=0.2)
        await link.connect()
        link.give_up_at = time.monotonic() - 1.0  # stopping, and the grace is over
        assert await link.call(lambda r: r.set("late", "work")) is True
        assert await link.call(lambda r: r.get("late")) == b"work"
        redis_server.stop()
        start = time.monotonic()
        with pytest.raises(LinkClosed, match="grace"):
            await link.call(lambda r: r.get("late"))
        assert time.monotonic() - start < 10
        await link.close()

    asyncio.run(go())
