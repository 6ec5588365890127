"""An in-memory consumer and producer with the transport's semantics (protocol/consumer.py,
protocol/producer.py), for unit tests of the loops built on them: no Redis, no sockets.

What it keeps of the real thing (tests/integration/test_transport_contract.py runs the same
scenarios on both): entry ids in order; a group's pending entries owned by a consumer, with
delivery counts and idle times; the own pending list taken back first, one entry per read
and counted only when handed out; other consumers' entries claimed once idle past
`claim_idle`; entries past `max_deliveries` or that fail to decode moved to the dead stream
with their reason; owner-checked acks, dead letters and lease extensions; trims that never
pass a pending or undelivered entry; backlog = produced - acked. Time is `time.monotonic`
unless a test gives `clock`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from protocol.codec import CodecLimits, ProtocolError, decode, encode
from protocol.config import RedisConfig
from protocol.consumer import STREAM_TYPES, Delivery
from protocol.messages import Message


@dataclass
class Pending:
    consumer: str
    deliveries: int
    since: float


@dataclass
class Group:
    last_delivered: int = 0
    """Sequence number of the newest entry handed out with `>`."""
    pending: dict[str, Pending] = field(default_factory=dict)


@dataclass
class Stream:
    entries: dict[str, bytes] = field(default_factory=dict)
    """Entry id -> encoded message, in insertion (id) order."""
    groups: dict[str, Group] = field(default_factory=dict)
    dead: list[dict] = field(default_factory=list)
    produced: int = 0
    acked: int = 0
    next_seq: int = 0


class MemoryRedis:
    """The shared state of one run's streams."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.streams: dict[str, Stream] = {}

    def stream(self, name: str) -> Stream:
        return self.streams.setdefault(name, Stream())

    def add(self, name: str, payloads: Sequence[bytes]) -> list[str]:
        s = self.stream(name)
        ids = []
        for raw in payloads:
            s.next_seq += 1
            eid = f"{s.next_seq}-0"
            s.entries[eid] = raw
            ids.append(eid)
        s.produced += len(payloads)
        return ids


def _seq(eid: str) -> int:
    return int(eid.partition("-")[0])


class MemoryConsumer:
    """`protocol.consumer.Consumer` over a `MemoryRedis`."""

    def __init__(
        self,
        redis: MemoryRedis,
        stream: str,
        group: str,
        name: str,
        cfg: RedisConfig,
        limits: CodecLimits | None = None,
    ):
        self.redis, self.stream, self.group, self.name, self.cfg = redis, stream, group, name, cfg
        self.limits = limits or CodecLimits(max_bytes=cfg.max_message_bytes)
        self.expect = STREAM_TYPES.get(stream)
        self._in_flight: set[str] = set()
        self._next_pending_check = 0.0

    @property
    def _s(self) -> Stream:
        return self.redis.stream(self.stream)

    @property
    def _g(self) -> Group:
        return self._s.groups.setdefault(self.group, Group())

    async def ensure_group(self) -> None:
        self._s.groups.setdefault(self.group, Group())

    # ------------------------------------------------------------ reading

    async def read(self, count: int | None = None, block_ms: int | None = None) -> list[Delivery]:
        return await self.redelivered() or await self.read_new(count, block_ms)

    async def redelivered(self) -> list[Delivery]:
        now = self.redis.clock()
        if now < self._next_pending_check:
            return []
        while (entry := self._redelivery()) is not None:
            out = self._accept([entry])
            if out:
                return out
        self._next_pending_check = now + self.cfg.pending_check_interval
        return []

    async def read_new(
        self, count: int | None = None, block_ms: int | None = None
    ) -> list[Delivery]:
        count = count or self.cfg.batch_size
        g, now = self._g, self.redis.clock()
        fresh = [eid for eid in self._s.entries if _seq(eid) > g.last_delivered][:count]
        if not fresh:  # BLOCK: nothing new; give the event loop to the other tasks a while
            block = self.cfg.block_ms if block_ms is None else block_ms
            await asyncio.sleep(min(block, 20) / 1000)
        for eid in fresh:
            g.last_delivered = _seq(eid)
            g.pending[eid] = Pending(self.name, 1, now)
        return self._accept([(eid, self._s.entries[eid], 1) for eid in fresh])

    async def take_back(self, entry_ids: Sequence[str]) -> list[Delivery]:
        out: list[Delivery] = []
        for eid in entry_ids:
            p = self._g.pending.get(eid)
            if eid in self._in_flight or p is None:
                continue
            out += self._accept([self._claim(eid)])
        return out

    def _redelivery(self) -> tuple[str, bytes | None, int] | None:
        g, now = self._g, self.redis.clock()
        for eid, p in sorted(g.pending.items(), key=lambda kv: _seq(kv[0])):
            if p.consumer == self.name and eid not in self._in_flight:
                return self._claim(eid)
        for eid, p in sorted(g.pending.items(), key=lambda kv: _seq(kv[0])):
            if p.consumer != self.name and now - p.since >= self.cfg.claim_idle:
                return self._claim(eid)
        return None

    def _claim(self, eid: str) -> tuple[str, bytes | None, int]:
        p = self._g.pending[eid]
        p.consumer, p.deliveries, p.since = self.name, p.deliveries + 1, self.redis.clock()
        return eid, self._s.entries.get(eid), p.deliveries

    def _accept(self, batch: Sequence[tuple[str, bytes | None, int]]) -> list[Delivery]:
        out = []
        for eid, raw, n in batch:
            if raw is None:
                self._dead_letter(eid, b"", "entry_deleted")
                continue
            if n > self.cfg.max_deliveries:
                self._dead_letter(eid, raw, f"max_deliveries: delivered {n} times")
                continue
            try:
                msg = decode(raw, self.limits)
            except ProtocolError as e:
                self._dead_letter(eid, raw, f"decode:{e.reason}: {e.detail}"[:500])
                continue
            if self.expect is not None and self.expect != msg.TYPE:
                self._dead_letter(eid, raw, f"wrong_type: {msg.TYPE!r} on {self.stream!r}")
                continue
            self._in_flight.add(eid)
            out.append(Delivery(eid, msg, n))
        return out

    # ------------------------------------------------------------ finishing

    def _owned(self, eid: str) -> bool:
        p = self._g.pending.get(eid)
        return p is not None and p.consumer == self.name

    async def ack(self, deliveries: Sequence[Delivery | str]) -> int:
        n = 0
        for d in deliveries:
            eid = d if isinstance(d, str) else d.entry_id
            if self._owned(eid):
                del self._g.pending[eid]
                self._s.acked += 1
                n += 1
            self._in_flight.discard(eid)
        return n

    def release(self, delivery: Delivery, error: BaseException | str) -> None:
        self._in_flight.discard(delivery.entry_id)

    async def dead_letter(self, entry_id: str, raw: bytes, reason: str) -> bool:
        return self._dead_letter(entry_id, raw, reason)

    def _dead_letter(self, eid: str, raw: bytes, reason: str) -> bool:
        self._in_flight.discard(eid)
        if not self._owned(eid):
            return False
        del self._g.pending[eid]
        self._s.acked += 1
        dead = self._s.dead
        dead.append({"raw": raw, "reason": reason, "source_id": eid, "stream": self.stream})
        del dead[: max(0, len(dead) - self.cfg.dead_letter_maxlen)]
        return True

    async def extend_lease(self, deliveries: Sequence[Delivery | str]) -> list[str]:
        owned = []
        for d in deliveries:
            eid = d if isinstance(d, str) else d.entry_id
            if self._owned(eid):
                self._g.pending[eid].since = self.redis.clock()
                owned.append(eid)
        return owned

    @property
    def lease_interval(self) -> float:
        return max(0.5, self.cfg.claim_idle / 3)

    async def trim(self) -> int:
        s = self._s
        floors = []
        for g in s.groups.values():
            oldest = min((_seq(e) for e in g.pending), default=None)
            floors.append(oldest if oldest is not None else g.last_delivered + 1)
        if not floors:
            return 0
        gone = [eid for eid in s.entries if _seq(eid) < min(floors)]
        for eid in gone:
            del s.entries[eid]
        return len(gone)

    async def backlog(self) -> int:
        return max(0, self._s.produced - self._s.acked)


class MemoryProducer:
    """`protocol.producer.Producer` over a `MemoryRedis` (backpressure: `send` refuses to
    pass `backlog_limit`; a test that fills a stream sees it as the real one would wait)."""

    def __init__(self, redis: MemoryRedis, cfg: RedisConfig):
        self.redis, self.cfg = redis, cfg

    async def send(
        self, stream: str, messages: Sequence[Message] | Message, wait: bool = True
    ) -> list[str]:
        batch = [messages] if not isinstance(messages, Sequence) else list(messages)
        payloads = [encode(m) for m in batch]
        if wait and await self.backlog(stream) + len(payloads) > self.cfg.backlog_limit_for(stream):
            raise RuntimeError(f"{stream}: the backlog limit would be passed (a real send waits)")
        return await self.send_raw(stream, payloads)

    async def send_raw(self, stream: str, payloads: Sequence[bytes]) -> list[str]:
        return self.redis.add(stream, payloads)

    async def backlog(self, stream: str) -> int:
        s = self.redis.stream(stream)
        return max(0, s.produced - s.acked)
