"""The producer side of a work stream: XADD with a produced counter, and backpressure.

Backlog = produced - acked, both counted by the clients in keys beside the stream (same hash
tag): the XADDs of a batch and the INCRBY of `produced` run in one MULTI/EXEC (atomic, all or
none, and as cheap for Redis as plain XADDs: a script that took the payloads as arguments
copied each one twice more and cost Redis 2.7 times the CPU per message); the consumer's ack
script INCRBYs `acked`. Unlike XINFO lag, this stays right when the stream is trimmed.
Producers wait while the backlog is at or above the limit, and send a large batch in chunks
that fit below it, so nothing is ever trimmed to make room (RELIABILITY.md test 14/15).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from protocol.codec import encode
from protocol.config import RedisConfig
from protocol.messages import Message
from protocol.metrics import TransportMetrics
from protocol.streams import FIELD, Keys, Link

BACKLOG_REFRESH = 1.0  # seconds between re-reads of the counters while under the limit


class Producer:
    """Writes messages to the work streams of one run."""

    def __init__(
        self,
        link: Link,
        keys: Keys,
        cfg: RedisConfig,
        metrics: TransportMetrics,
        stop: asyncio.Event | None = None,
    ):
        """`stop`: the process's stop event; once set, backpressure waits end at once, so a
        stopping process can publish the work it finished and exit instead of waiting for
        consumers that may be stopping too."""
        self.link, self.keys, self.cfg, self.m, self.stop = link, keys, cfg, metrics, stop
        # stream -> (backlog as last read + what we sent since, monotonic time of the read)
        self._estimate: dict[str, tuple[int, float]] = {}

    async def send(
        self, stream: str, messages: Sequence[Message] | Message, wait: bool = True
    ) -> list[str]:
        """Append messages to `stream`; returns their entry ids.

        With `wait`, the batch goes out in chunks, each no larger than the room left below
        `backlog_limit` (waiting for room before each), so this producer never takes the
        backlog past the limit however large its batch: an estimator that turns one
        trajectory into a sample and its reused reset samples publishes up to
        (1 + n_reset) samples per trajectory. Several producers may each fill the room they
        last saw, so the backlog is bounded by the limit times the producers. Once the
        process is stopping, the rest goes out at once (its work is finished)."""
        batch = [messages] if not isinstance(messages, Sequence) else list(messages)
        if not batch:
            return []
        payloads = [encode(m) for m in batch]
        if not wait:
            return await self.send_raw(stream, payloads)
        limit = self.cfg.backlog_limit_for(stream)
        ids: list[str] = []
        while payloads:
            if await self.wait_for_room(stream, limit):
                room = limit - self._estimate[stream][0]
            else:  # stopping
                room = len(payloads)
            ids += await self.send_raw(stream, payloads[:room])
            payloads = payloads[room:]
        return ids

    async def send_raw(self, stream: str, payloads: Sequence[bytes]) -> list[str]:
        """Append already encoded payloads (tests use this to inject hostile bytes)."""
        key, counter = self.keys.stream(stream), self.keys.produced(stream)

        async def xadd(r) -> list:
            pipe = r.pipeline(transaction=True)
            for payload in payloads:
                pipe.xadd(key, {FIELD: payload})
            pipe.incrby(counter, len(payloads))
            return await pipe.execute()

        result = (await self.link.call(xadd))[:-1]
        self.m.produced.labels(stream).inc(len(payloads))
        backlog, at = self._estimate.get(stream, (0, 0.0))
        self._estimate[stream] = (backlog + len(payloads), at)
        return [eid.decode() for eid in result]

    async def backlog(self, stream: str) -> int:
        """Produced minus acknowledged entries of `stream`, read from Redis now."""
        produced, acked = await self.link.call(
            lambda r: r.mget(self.keys.produced(stream), self.keys.acked(stream))
        )
        value = max(0, int(produced or 0) - int(acked or 0))
        self._estimate[stream] = (value, time.monotonic())
        self.m.backlog.labels(stream).set(value)
        return value

    async def wait_for_room(
        self, stream: str, limit: int | None = None, timeout: float | None = None
    ) -> bool:
        """Wait until the backlog of `stream` is below `limit`; False if `timeout` ran out.

        The local estimate (last read plus own sends) only grows between reads, so it is
        re-read from Redis when it reaches the limit or is older than BACKLOG_REFRESH."""
        limit = limit or self.cfg.backlog_limit_for(stream)
        backlog, at = self._estimate.get(stream, (0, 0.0))
        if backlog < limit and time.monotonic() - at < BACKLOG_REFRESH:
            return True
        start = counted = time.monotonic()
        delay = 0.05
        try:
            while await self.backlog(stream) >= limit:
                if timeout is not None and time.monotonic() - start > timeout:
                    return False
                if self.stop is not None and self.stop.is_set():
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                # counted as it accrues, so a producer held back by a stalled consumer shows
                # on the dashboard during the stall, not only once it ends
                now = time.monotonic()
                self.m.backpressure_seconds.labels(stream).inc(now - counted)
                counted = now
            return True
        finally:
            if counted > start:  # it waited: the last stretch too
                self.m.backpressure_seconds.labels(stream).inc(time.monotonic() - counted)
