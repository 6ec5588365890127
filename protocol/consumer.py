"""The consumer side of a work stream: at-least-once delivery with claims and dead letters.

The loop (RELIABILITY.md): drain the own pending list -> read `>` with BLOCK below
the socket timeout -> the caller processes -> `ack` -> every `pending_check_interval`,
take back the own pending entries not in flight and claim entries idle past `claim_idle`
-> long jobs `extend_lease` -> after `max_deliveries`, the entry moves to `<stream>:dead`.

Redeliveries go out one per `read`, each claimed (one more delivery counted) only as it is
handed out, so entries waiting to be redelivered count nothing. A consumer that batches (the
actor) takes them with `redelivered` and processes each alone: a message that kills its
consumer every time then reaches `max_deliveries` alone, without dragging the messages read
together with it into the dead stream.

Acks and dead-letter moves run as Lua scripts that first check this consumer still owns the
entry (XACK alone is not owner-checked: a zombie's late ack would remove an entry another
consumer took over), then XACK and count the ack, atomically; the dead-letter script also
XADDs the original bytes with the reason. All keys of one script share a hash tag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis import exceptions as rex

from protocol.codec import CodecLimits, ProtocolError, decode
from protocol.config import RedisConfig
from protocol.messages import Message, Prompt, ResetRequest, Sample, Trajectory
from protocol.metrics import TransportMetrics
from protocol.streams import (
    FIELD,
    PROMPTS,
    RESETS,
    SAMPLES,
    TRAJECTORIES,
    Keys,
    Link,
    is_nogroup,
)

log = logging.getLogger(__name__)


# The one message type each work stream carries (DESIGN.md section 2). A well-formed message
# of another type is dead-lettered like a malformed one: handlers may rely on the type.
STREAM_TYPES = {
    PROMPTS: Prompt.TYPE,
    RESETS: ResetRequest.TYPE,
    TRAJECTORIES: Trajectory.TYPE,
    SAMPLES: Sample.TYPE,
}

# KEYS: stream, acked counter. ARGV: group, consumer, ids...  -> number acked
_ACK_LUA = """
local acked = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    acked = acked + redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  end
end
if acked > 0 then redis.call('INCRBY', KEYS[2], acked) end
return acked
"""

# KEYS: stream, dead stream, acked counter. ARGV: group, consumer, id, reason, raw, stream name
_DEAD_LUA = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not (p[1] and p[1][2] == ARGV[2]) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[7], '*', 'raw', ARGV[5], 'reason', ARGV[4],
           'source_id', ARGV[3], 'stream', ARGV[6], 'consumer', ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('INCRBY', KEYS[3], 1)
return 1
"""

# KEYS: stream. ARGV: group, consumer, ids... -> ids still owned (and now freshly leased)
_LEASE_LUA = """
local owned = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(owned, ARGV[i])
  end
end
return owned
"""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to the caller."""

    entry_id: str
    """Redis stream entry id (not the message id)."""
    message: Message
    deliveries: int
    """How many times Redis has delivered this entry (1 for a first read)."""


class Consumer:
    """Reads one stream as one consumer of one group."""

    def __init__(
        self,
        link: Link,
        keys: Keys,
        stream: str,
        group: str,
        name: str,
        cfg: RedisConfig,
        metrics: TransportMetrics,
        limits: CodecLimits | None = None,
    ):
        self.link, self.stream, self.group, self.name, self.cfg, self.m = (
            link,
            stream,
            group,
            name,
            cfg,
            metrics,
        )
        self.key = keys.stream(stream)
        self.dead_key = keys.dead(stream)
        self.acked_key = keys.acked(stream)
        self.produced_key = keys.produced(stream)
        self.limits = limits or CodecLimits(max_bytes=cfg.max_message_bytes)
        self.expect = STREAM_TYPES.get(stream)  # None (any type) for streams outside the table
        self._ack = link.client.register_script(_ACK_LUA)
        self._dead = link.client.register_script(_DEAD_LUA)
        self._lease = link.client.register_script(_LEASE_LUA)
        self._in_flight: set[str] = set()
        self._last_error: dict[str, str] = {}
        self._next_pending_check = 0.0  # at start: drain the own pending list first
        self._next_trim = time.monotonic() + cfg.trim_interval
        if cfg.trim_interval:  # at maxmemory, free what every group acknowledged (Link)
            link.add_oom_relief(self.trim)

    # ------------------------------------------------------------ group management

    async def ensure_group(self) -> None:
        """Create the group (and stream) if missing; idempotent. Starts at id 0 so entries
        produced before any consumer existed are read."""

        async def create(r):
            try:
                await r.xgroup_create(self.key, self.group, id="0", mkstream=True)
            except rex.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

        await self.link.call(create)

    async def _call(self, op):
        """`link.call` that recreates the group once on NOGROUP (Redis lost its data)."""
        try:
            return await self.link.call(op)
        except rex.ResponseError as e:
            if not is_nogroup(e):
                raise
            log.warning(
                "group %s on %s is gone (Redis restarted without data?); recreating",
                self.group,
                self.key,
            )
            self.m.group_resets.labels(self.stream).inc()
            self._in_flight.clear()
            await self.ensure_group()
            return await self.link.call(op)

    # ------------------------------------------------------------ reading

    async def read(self, count: int | None = None, block_ms: int | None = None) -> list[Delivery]:
        """The next entries for this consumer: one redelivered entry if one is due, else new
        ones (`read_new`).

        Entries that fail to decode, or were delivered more than `max_deliveries` times, go to
        the dead stream here and are not returned. May return an empty list (BLOCK expired).
        """
        return await self.redelivered() or await self.read_new(count, block_ms)

    async def redelivered(self) -> list[Delivery]:
        """One entry to process again, claimed now, when the pending check is due and finds
        one; else []. While it keeps finding some, the check stays due."""
        if time.monotonic() < self._next_pending_check:
            return []
        while (entry := await self._redelivery()) is not None:
            out = await self._accept([entry], recovered=True)
            if out:
                return out
        self._next_pending_check = time.monotonic() + self.cfg.pending_check_interval
        return []

    async def read_new(
        self, count: int | None = None, block_ms: int | None = None
    ) -> list[Delivery]:
        """Entries never delivered before (XREADGROUP `>`), blocking up to `block_ms`."""
        count = count or self.cfg.batch_size
        block = self.cfg.block_ms if block_ms is None else block_ms
        entries = await self._call(
            lambda r: r.xreadgroup(
                self.group, self.name, {self.key: ">"}, count=count, block=block or None
            )
        )
        raw = [
            (eid.decode(), fields.get(FIELD) if fields else None, 1)
            for eid, fields in _entries(entries)
        ]
        return await self._accept(raw, recovered=False)

    async def take_back(self, entry_ids: Sequence[str]) -> list[Delivery]:
        """Claim these pending entries now, whoever holds them, ahead of anything else: a
        restarted process taking back what its own durable records name (the learner's
        bisection). Each counts one delivery, as any redelivery does; entries acked or
        deleted meanwhile, or already held here, are skipped."""
        out: list[Delivery] = []
        for eid in entry_ids:
            if eid in self._in_flight:
                continue
            info = await self._call(
                lambda r, e=eid: r.xpending_range(self.key, self.group, min=e, max=e, count=1)
            )
            if not info or (got := await self._claim(eid, 0)) is None:
                continue
            out += await self._accept(
                [(eid, got.get(FIELD), int(info[0]["times_delivered"]) + 1)], recovered=True
            )
        return out

    async def _redelivery(self) -> tuple[str, bytes | None, int] | None:
        """Claim one entry to hand out again, with its delivery count: an own pending entry
        not in flight here (a crash, or a read whose reply was lost), else another
        consumer's entry idle past `claim_idle`.

        Candidates are listed with XPENDING, which counts no delivery; only the claimed one
        counts one (XCLAIM). Re-reading the own list from id `0`, or claiming every idle
        entry at once, would count a delivery for entries still held (the learner holds its
        buffer across many checks) or not yet handed out, and after a crash those would
        pass `max_deliveries` unprocessed."""
        start = "-"
        while True:  # own pending list, page by page
            page = await self._call(
                lambda r, s=start: r.xpending_range(
                    self.key, self.group, min=s, max="+", count=100, consumername=self.name
                )
            )
            for p in page:
                eid = p["message_id"].decode()
                if eid not in self._in_flight and (got := await self._claim(eid, 0)) is not None:
                    return eid, got.get(FIELD), int(p["times_delivered"]) + 1
            if len(page) < 100:
                break
            start = "(" + page[-1]["message_id"].decode()
        min_idle_ms = int(self.cfg.claim_idle * 1000)
        idle = await self._call(
            lambda r: r.xpending_range(self.key, self.group, "-", "+", 100, idle=min_idle_ms)
        )
        for p in idle:  # bounded sweep; the next check continues
            eid = p["message_id"].decode()
            if p["consumer"].decode() == self.name:
                continue  # in flight here, or taken back above
            if (got := await self._claim(eid, min_idle_ms)) is not None:
                return eid, got.get(FIELD), int(p["times_delivered"]) + 1
        return None

    async def _claim(self, eid: str, min_idle_ms: int) -> dict | None:
        """XCLAIM one entry for this consumer if it is still idle for `min_idle_ms`; its
        fields, or None when it was acked, taken by another consumer, or deleted."""
        claimed = await self._call(
            lambda r: r.xclaim(self.key, self.group, self.name, min_idle_ms, [eid])
        )
        return (claimed[0][1] or {}) if claimed else None

    async def _accept(
        self, batch: Sequence[tuple[str, bytes | None, int]], recovered: bool
    ) -> list[Delivery]:
        out = []
        for eid, raw, n in batch:
            if recovered:
                self.m.redelivered.labels(self.stream).inc()
            if raw is None:  # entry deleted from the stream while pending: nothing to process
                await self.dead_letter(eid, b"", "entry_deleted")
                continue
            if n > self.cfg.max_deliveries:
                last = self._last_error.pop(eid, "no error recorded by this consumer")
                await self.dead_letter(
                    eid, raw, f"max_deliveries: delivered {n} times; last error: {last}"
                )
                continue
            try:
                msg = decode(raw, self.limits)
            except ProtocolError as e:
                await self.dead_letter(eid, raw, f"decode:{e.reason}: {e.detail}"[:500])
                continue
            if self.expect is not None and self.expect != msg.TYPE:
                await self.dead_letter(
                    eid, raw, f"wrong_type: {msg.TYPE!r} on {self.stream!r} (wants {self.expect!r})"
                )
                continue
            self._in_flight.add(eid)
            out.append(Delivery(eid, msg, n))
        return out

    # ------------------------------------------------------------ finishing

    async def ack(self, deliveries: Sequence[Delivery | str]) -> int:
        """Acknowledge entries this consumer still owns; returns how many were acked.
        Entries another consumer took over meanwhile are not acked (counted as lease lost)."""
        ids = [d if isinstance(d, str) else d.entry_id for d in deliveries]
        if not ids:
            return 0
        n = await self._call(
            lambda r: self._ack(
                keys=[self.key, self.acked_key], args=[self.group, self.name, *ids], client=r
            )
        )
        for eid in ids:
            self._in_flight.discard(eid)
            self._last_error.pop(eid, None)
        self.m.processed.labels(self.stream).inc(n)
        if n < len(ids):
            self.m.lease_lost.labels(self.stream).inc(len(ids) - n)
        if self.cfg.trim_interval and time.monotonic() >= self._next_trim:
            self._next_trim = time.monotonic() + self.cfg.trim_interval
            self.m.trimmed.labels(self.stream).inc(await self.trim())
        return int(n)

    def release(self, delivery: Delivery, error: BaseException | str) -> None:
        """The handler failed: leave the entry pending for a retry at the next pending check
        (the delivery count rises until `max_deliveries` sends it to the dead stream)."""
        self._in_flight.discard(delivery.entry_id)
        self._last_error[delivery.entry_id] = (
            f"{type(error).__name__}: {error}"[:300]
            if isinstance(error, BaseException)
            else str(error)[:300]
        )
        self.m.handler_errors.labels(self.stream).inc()

    async def dead_letter(self, entry_id: str, raw: bytes, reason: str) -> bool:
        """Move an owned entry to `<stream>:dead` with its reason and ack it, atomically."""
        reason_label = (
            reason.split(":", 2)[0]
            if not reason.startswith("decode:")
            else ":".join(reason.split(":")[:2])
        )
        done = await self._call(
            lambda r: self._dead(
                keys=[self.key, self.dead_key, self.acked_key],
                args=[
                    self.group,
                    self.name,
                    entry_id,
                    reason,
                    raw,
                    self.stream,
                    self.cfg.dead_letter_maxlen,
                ],
                client=r,
            )
        )
        self._in_flight.discard(entry_id)
        if done:
            log.warning("dead-lettered %s entry %s: %s", self.stream, entry_id, reason)
            self.m.dead_lettered.labels(self.stream, reason_label).inc()
        return bool(done)

    async def extend_lease(self, deliveries: Sequence[Delivery | str]) -> list[str]:
        """Reset the idle time of entries this consumer still owns, so nobody claims them
        while a long job runs. Returns the ids still owned; the others were taken over."""
        ids = [d if isinstance(d, str) else d.entry_id for d in deliveries]
        if not ids:
            return []
        owned = await self._call(
            lambda r: self._lease(keys=[self.key], args=[self.group, self.name, *ids], client=r)
        )
        return [x.decode() if isinstance(x, bytes) else x for x in owned]

    @property
    def lease_interval(self) -> float:
        """Seconds between lease extensions: three per `claim_idle`, at most two a second."""
        return max(0.5, self.cfg.claim_idle / 3)

    @contextlib.asynccontextmanager
    async def lease(
        self, deliveries: Sequence[Delivery], interval: float | None = None
    ) -> AsyncIterator[None]:
        """Keep extending the lease of `deliveries` while the block runs (long MC jobs)."""
        every = interval or self.lease_interval
        stop = asyncio.Event()
        task = asyncio.create_task(
            repeat(every, lambda: self.extend_lease(deliveries), stop), name=f"lease-{self.stream}"
        )
        try:
            yield
        finally:
            await end(task, stop)

    async def trim(self) -> int:
        """Delete entries every consumer is done with: XTRIM MINID at the oldest entry that
        is still pending or not yet delivered. Never drops an undelivered entry."""

        async def op(r):
            if not await r.exists(self.key):
                return 0
            groups = await r.xinfo_groups(self.key)
            floor = None
            for g in groups:
                last = g["last-delivered-id"].decode()
                summary = await r.xpending(self.key, g["name"])
                oldest_pending = summary["min"].decode() if summary["pending"] else None
                bound = oldest_pending or _next_id(last)
                floor = bound if floor is None else min(floor, bound, key=_id_key)
            if floor is None or floor == "0-1":
                return 0
            return await r.xtrim(self.key, minid=floor, approximate=False)

        return int(await self._call(op))

    async def backlog(self) -> int:
        """Entries produced and not yet acked (counted by the clients, not XINFO lag)."""
        produced, acked = await self._call(lambda r: r.mget(self.produced_key, self.acked_key))
        return max(0, int(produced or 0) - int(acked or 0))


def _entries(resp) -> list:
    """Entries of a single-stream XREADGROUP reply (RESP2: [[stream, [(id, fields)...]]])."""
    if not resp:
        return []
    return resp[0][1]


def _id_key(item) -> tuple[int, int]:
    eid = item[0] if isinstance(item, tuple) else item
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def _next_id(eid: str) -> str:
    ms, seq = _id_key(eid)
    return f"{ms}-{seq + 1}"


async def repeat(
    seconds: float, call: Callable[[], Awaitable[object]], stop: asyncio.Event
) -> None:
    """Await `call()` every `seconds` until `stop` is set (a lease keeper's loop).

    It stops on the event, not on cancellation alone: redis-py sends each command under
    `asyncio.wait_for`, which on Python 3.11 swallows a cancel that lands as the send
    completes, and a keeper that missed its cancel would run, and hold its owner's exit,
    forever (seen after a Redis pause, when the keeper's call and the owner's last call
    returned together). See `end`."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=seconds)
        except TimeoutError:
            await call()


async def end(task: asyncio.Task, stop: asyncio.Event) -> None:
    """Stop a `repeat` task and wait for it; a call in flight is cancelled, and an error the
    task raised is raised here."""
    stop.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
