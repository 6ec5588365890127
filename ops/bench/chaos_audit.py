"""What `gpo bench chaos` records while the run goes on: every work-stream entry before a
trim can delete it, and Redis memory.

The run trims its streams as a real one does (`redis.trim_interval`), so the ledger cannot
read every entry back at the end. An *audit* consumer group on each work stream, created
before any worker starts, reads every entry as it is added and acknowledges it once copied
here; a trim never passes an entry a group has not acknowledged (`Consumer.trim`), so none
is deleted before the audit has it. Acks by the audit group touch no counter the producers
read (their backlog is produced - acked by the workers' groups). After a Redis restart
that lost the group (AOF everysec), it is created again from the stream's start: copies are
keyed by entry id, so re-reading is harmless.

Memory: `used_memory` and the server's count of refused writes (`errorstat_OOM`), sampled
every few seconds; a Redis restart resets the count, and the sampler adds across restarts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis
from redis import exceptions as rex

from ops.ledger import StreamDump, id_order
from protocol.consumer import FIELD
from protocol.streams import WORK_STREAMS, Keys

AUDIT_GROUP = "audit"
MEMORY_EVERY = 2.0
"""Seconds between two memory samples."""
PLATEAU_SLACK = (0.10, 4 * 2**20)
"""Growth from the first half's peak to the last quarter's that still counts as a plateau:
10% and 4 MiB (streams breathe between trims; untrimmed, the demo grows ~6 MiB a minute)."""


@dataclass
class MemoryTrace:
    """Redis memory over the run: (seconds since start, used_memory bytes) samples, and the
    writes refused at maxmemory."""

    samples: list[tuple[float, int]] = field(default_factory=list)
    oom_refusals: int = 0
    maxmemory: int = 0
    since: float = 0.0
    """Seconds after the start from which the plateau is judged (the faults' start: the
    warm-up's growth is not judged)."""

    def quarters(self) -> list[int]:
        """Peak used memory (bytes) in each quarter of the judged samples."""
        judged = [(t, used) for t, used in self.samples if t >= self.since]
        if len(judged) < 4:
            return []
        t0, span = judged[0][0], (judged[-1][0] - judged[0][0]) or 1.0
        peaks = [0, 0, 0, 0]
        for t, used in judged:
            q = min(int(4 * (t - t0) / span), 3)
            peaks[q] = max(peaks[q], used)
        return peaks

    @property
    def plateaued(self) -> bool:
        """The last quarter's peak is within PLATEAU_SLACK of the first half's."""
        q = self.quarters()
        if not q:
            return False
        share, extra = PLATEAU_SLACK
        return q[3] <= (1 + share) * max(q[0], q[1]) + extra


class Auditor:
    """A thread that copies every work-stream entry (raw bytes by entry id) and samples
    memory, against a Redis that may pause, die and come back."""

    def __init__(self, client_factory, keys: Keys):
        self.client_factory, self.keys = client_factory, keys
        self.entries: dict[str, dict[str, bytes]] = {s: {} for s in WORK_STREAMS}
        self.memory = MemoryTrace()
        self._oom_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-audit", daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> None:
        """Create the audit groups (before any worker writes), then copy in the background."""
        r = self.client_factory()
        try:
            self.ensure_groups(r)
        finally:
            r.close()
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """Copy what is left, then stop (call before the ledger is read)."""
        self._stop.set()
        self._thread.join(60)
        r = self.client_factory()
        try:
            while self._copy(r):
                pass
        finally:
            r.close()

    def judge_memory_from_now(self) -> None:
        """The plateau is judged on the samples from here on (the faults' start)."""
        self.memory.since = time.monotonic() - self._t0

    def merged(self, stream: str, dump: StreamDump) -> StreamDump:
        """`dump` with the entries trimmed since the audit copied them put back."""
        entries = dict(self.entries[stream])
        entries.update(dump.entries)
        ordered = sorted(entries.items(), key=lambda kv: id_order(kv[0]))
        return StreamDump(ordered, dump.pending, dump.last_delivered, dump.dead)

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        r, next_sample = None, 0.0
        while not self._stop.is_set():
            try:
                r = r or self.client_factory()
                copied = self._copy(r)
                if time.monotonic() >= next_sample:
                    self._sample(r)
                    next_sample = time.monotonic() + MEMORY_EVERY
                if not copied:
                    self._stop.wait(0.2)
            except (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError):
                if r is not None:
                    r.close()
                r = None
                self._stop.wait(0.5)  # Redis paused or down: the faults end with it back up
        if r is not None:
            r.close()

    def _copy(self, r: redis.Redis) -> int:
        """One read of every stream's new entries; returns how many were copied."""
        n = 0
        for stream in WORK_STREAMS:
            key = self.keys.stream(stream)
            try:
                got = r.xreadgroup(AUDIT_GROUP, "auditor", {key: ">"}, count=1000)
            except rex.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                self.ensure_groups(r)  # a restarted Redis lost it: read again from the start
                continue
            ids = []
            for _, entries in got or []:
                for eid, fields in entries:
                    self.entries[stream][eid.decode()] = (fields or {}).get(FIELD, b"")
                    ids.append(eid)
            if ids:
                r.xack(key, AUDIT_GROUP, *ids)
                n += len(ids)
        return n

    def ensure_groups(self, r: redis.Redis) -> None:
        for stream in WORK_STREAMS:
            try:
                r.xgroup_create(self.keys.stream(stream), AUDIT_GROUP, id="0", mkstream=True)
            except rex.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def _sample(self, r: redis.Redis) -> None:
        info = r.info("memory")
        self.memory.maxmemory = int(info.get("maxmemory", 0))
        self.memory.samples.append((time.monotonic() - self._t0, int(info["used_memory"])))
        oom = int(r.info("errorstats").get("errorstat_OOM", {}).get("count", 0))
        self.memory.oom_refusals += oom - self._oom_seen if oom >= self._oom_seen else oom
        self._oom_seen = oom
