"""Adapter broadcast: LoRA weights as chunked keys plus a pointer on the `weights` stream.

Publish (`AdapterPublisher`): the safetensors bytes are cut into chunks at tensor boundaries
(at most 4 MiB: large values stall Redis and blow up client buffers) written to
`adapter:<version>:<i>`, then an AdapterPointer (version, sha256, size, chunk keys, LoRA
config, base model) goes on `weights`. A chunk whose bytes equal one of the version before
is not written again: the pointer names the older key. Chunks no version of the last `keep`
names are deleted, found through the run's chunk index (`Keys.adapter_index`, a sorted set
scored by the newest version naming each key; no SCAN, so it works on a cluster).

Fetch (`fetch_adapter`): the chunks are read `chunks_per_call` to a round trip (a pipeline
of GETs), with `concurrency` round trips in flight on as many pooled connections; in order,
each is copied once into a buffer preallocated at the pointer's size, and hashed (sha256,
in a thread, while the next chunks arrive). The blob is checked against size and sha256,
and its safetensors layout is checked from the header alone; the engine's parse views the
tensors in that same buffer. A mismatch is rejected (`AdapterRejected`) and counted; it is
never loaded. With a host cache (`protocol.adapter_cache`) the processes of one machine
make one fetch per version between them. `AdapterFollower` tells a process when a newer
version exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from protocol.codec import ProtocolError, decode, encode
from protocol.consumer import FIELD
from protocol.messages import AdapterPointer
from protocol.metrics import Metrics
from protocol.safetensors_layout import layout
from protocol.streams import WEIGHTS, Keys, Link

if TYPE_CHECKING:
    from protocol.adapter_cache import HostCache

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 1024 * 1024
WEIGHTS_STREAM_MAXLEN = 1000  # pointers only; every reader needs just the newest
THREAD_HASH_BYTES = 1024 * 1024


class AdapterRejected(ValueError):
    """A published adapter that failed verification; `reason` is machine-readable."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """How an actor or estimator reads adapter versions (`[actor.fetch]`, `[estimator.fetch]`)."""

    concurrency: int = 2
    """Round trips in flight at once, each on its own pooled connection."""
    chunks_per_call: int = 2
    """Chunk GETs pipelined into one round trip. Redis holds up to concurrency x
    chunks_per_call chunks (4 MiB each) of replies per reading process."""
    host_cache: str = "auto"
    """Directory through which the processes of one machine share each fetched version, so
    one of them fetches it from Redis: `auto` (`<tmp>/gpo-adapters-<uid>`), a path, or `off`
    (every process fetches every version)."""

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.chunks_per_call < 1:
            raise ValueError("fetch.concurrency and fetch.chunks_per_call must be >= 1")
        if not self.host_cache:
            raise ValueError("fetch.host_cache must be `auto`, `off` or a directory")


@dataclass(frozen=True, slots=True)
class Adapter:
    """A verified adapter version, ready for `Engine.load_adapter`."""

    pointer: AdapterPointer
    safetensors_bytes: memoryview | bytearray
    """The safetensors file, in the buffer it was received into (writable: the engine
    views its tensors in place)."""


class AdapterMetrics:
    def __init__(self, m: Metrics):
        self.publish_seconds = m.histogram(
            "adapter_publish_seconds", "Time to publish one adapter version."
        )
        self.fetch_seconds = m.histogram(
            "adapter_fetch_seconds", "Time to fetch and verify one adapter version."
        )
        self.rejected = m.counter(
            "adapter_rejected_total", "Adapter versions refused by verification.", ("reason",)
        )
        self.published_bytes = m.counter(
            "adapter_published_bytes_total", "Bytes of adapter weights published."
        )
        self.written_bytes = m.counter(
            "adapter_written_bytes_total",
            "Bytes of adapter chunks written to Redis (chunks unchanged since the last "
            "version are not written again).",
        )
        self.fetched_bytes = m.counter(
            "adapter_fetched_bytes_total", "Bytes of adapter weights read from Redis."
        )
        self.host_cache = m.counter(
            "adapter_host_cache_total",
            "Adapter versions by where this process got them: `hit` (the host cache), "
            "`fetched` (Redis, then shared through the cache), `bad` (a cached file that "
            "failed verification and was fetched again).",
            ("outcome",),
        )


def chunk_cuts(blob: bytes | bytearray, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """The (begin, end) byte ranges `blob` is published in, each at most `chunk_bytes`.

    A safetensors blob is cut at tensor boundaries: the header and the tensors, in offset
    order, are packed into a chunk while they fit, and a tensor larger than a chunk is cut
    from its own start. So a tensor unchanged from one version to the next gives chunks of
    the same bytes, which the publisher need not write again. Anything else: plain cuts."""
    try:
        spans = sorted(layout(blob).values(), key=lambda s: s.offset)
    except ValueError:
        return [(i, min(i + chunk_bytes, len(blob))) for i in range(0, len(blob), chunk_bytes)]
    cuts: list[tuple[int, int]] = []
    begin, end = 0, len(blob) - sum(s.nbytes for s in spans)  # the header ends where they begin
    for span in spans:
        if end - begin + span.nbytes > chunk_bytes and end > begin:
            cuts.append((begin, end))
            begin = end
        end += span.nbytes  # the tensors tile the rest of the blob in offset order
        while end - begin > chunk_bytes:
            cuts.append((begin, begin + chunk_bytes))
            begin += chunk_bytes
    if end > begin:
        cuts.append((begin, end))
    return cuts


class AdapterPublisher:
    """Publishes the versions of one run's adapter (the learner holds one).

    Each version's chunks (`chunk_cuts`) are compared with the version before (its bytes are
    kept: the learner holds one adapter more); a chunk whose range and bytes are unchanged is
    not written again: the pointer names the key that holds it, and that key's score in the
    chunk index moves up to the new version, so it outlives the versions it was written for. Keys are checked to exist before they are reused (a Redis restarted
    without its data would otherwise leave every later version incomplete)."""

    def __init__(
        self,
        link: Link,
        keys: Keys,
        base_model: str,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        keep: int = 3,
        metrics: AdapterMetrics | None = None,
    ):
        self.link, self.keys, self.base_model = link, keys, base_model
        self.chunk_bytes, self.keep, self.metrics = chunk_bytes, keep, metrics
        self._last: tuple[memoryview, dict[tuple[int, int], str]] | None = None
        """The last version published: its bytes, and each chunk's range -> the key holding it."""

    async def publish(
        self, version: int, blob: bytes | bytearray, lora_config: dict
    ) -> AdapterPointer:
        """Write the changed chunks, then the pointer; delete chunks of versions older than
        `keep` that no newer version names."""
        start = time.perf_counter()
        keys, whole = self.keys, memoryview(blob)  # chunks are views: nothing copied to send
        cuts = chunk_cuts(blob, self.chunk_bytes)
        # compared and hashed in a thread (numpy and hashlib release the GIL): the loop serves
        digest, same = await asyncio.to_thread(_compare, whole, cuts, self._last)
        reusable = await self._existing(same)
        chunk_keys = [
            reusable.get(cut) or keys.adapter_chunk(version, i) for i, cut in enumerate(cuts)
        ]
        # indexed before written: a crash in between leaves no chunk that nobody would delete
        await self.link.call(
            lambda r: r.zadd(keys.adapter_index(), dict.fromkeys(chunk_keys, version))
        )
        written = 0
        for i, (key, (a, b)) in enumerate(zip(chunk_keys, cuts, strict=True)):
            if key == keys.adapter_chunk(version, i):  # one value per call: no 100 MB pipelines
                await self.link.call(lambda r, k=key, c=whole[a:b]: r.set(k, c))
                written += b - a
        pointer = AdapterPointer(
            id=f"adapter:{version}",
            run=keys.run_id,
            ts=time.time(),
            version=version,
            base_model=self.base_model,
            lora_config=lora_config,
            sha256=digest,
            size=len(blob),
            chunk_keys=chunk_keys,
        )
        raw = encode(pointer)
        await self.link.call(
            lambda r: r.xadd(
                keys.stream(WEIGHTS), {FIELD: raw}, maxlen=WEIGHTS_STREAM_MAXLEN, approximate=True
            )
        )
        self._last = (whole, dict(zip(cuts, chunk_keys, strict=True)))
        await _delete_old_versions(self.link, keys, version - self.keep)
        if self.metrics:
            self.metrics.publish_seconds.observe(time.perf_counter() - start)
            self.metrics.published_bytes.inc(len(blob))
            self.metrics.written_bytes.inc(written)
        return pointer

    async def _existing(self, candidates: dict[tuple[int, int], str]) -> dict[tuple[int, int], str]:
        """The entries of `candidates` (chunk range -> key) whose key exists in Redis."""
        if not candidates:
            return {}
        names = list(candidates.values())
        found = await self.link.call(lambda r: _per_key(r, "exists", names))
        return {d: k for (d, k), n in zip(candidates.items(), found, strict=True) if n}


def _compare(
    whole: memoryview,
    cuts: list[tuple[int, int]],
    last: tuple[memoryview, dict[tuple[int, int], str]] | None,
) -> tuple[str, dict[tuple[int, int], str]]:
    """sha256 of the blob, and the chunks (range -> key) whose range and bytes are those of a
    chunk of the last version."""
    same = {}
    if last is not None:
        before, keys = last
        now, then = np.frombuffer(whole, np.uint8), np.frombuffer(before, np.uint8)
        for a, b in cuts:
            if (a, b) in keys and b <= len(then) and np.array_equal(now[a:b], then[a:b]):
                same[(a, b)] = keys[(a, b)]
    return hashlib.sha256(whole).hexdigest(), same


async def publish_adapter(
    link: Link,
    keys: Keys,
    version: int,
    safetensors_bytes: bytes | bytearray,
    lora_config: dict,
    base_model: str,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    keep: int = 3,
    metrics: AdapterMetrics | None = None,
) -> AdapterPointer:
    """Publish one version with nothing to reuse (every chunk written): `AdapterPublisher`."""
    publisher = AdapterPublisher(
        link, keys, base_model, chunk_bytes=chunk_bytes, keep=keep, metrics=metrics
    )
    return await publisher.publish(version, safetensors_bytes, lora_config)


async def _delete_old_versions(link: Link, keys: Keys, newest_to_delete: int) -> None:
    if newest_to_delete < 1:
        return
    index = keys.adapter_index()
    doomed = await link.call(lambda r: r.zrangebyscore(index, "-inf", newest_to_delete))
    for i in range(0, len(doomed), 100):
        batch = doomed[i : i + 100]
        await link.call(lambda r, ks=batch: r.unlink(*ks))
        await link.call(lambda r, ks=batch: r.zrem(index, *ks))


async def fetch_adapter(
    link: Link,
    pointer: AdapterPointer,
    *,
    concurrency: int = 2,
    chunks_per_call: int = 2,
    cache: HostCache | None = None,
    metrics: AdapterMetrics | None = None,
) -> Adapter:
    """The verified blob of `pointer`: from the host cache when a process of this machine
    has it, else from Redis (`read_chunks`). AdapterRejected if it fails verification."""
    start = time.perf_counter()

    async def from_redis() -> memoryview:
        blob = await read_chunks(link, pointer, concurrency, chunks_per_call)
        if metrics:
            metrics.fetched_bytes.inc(len(blob))
        return blob

    try:
        if cache is None:
            blob = await from_redis()
        else:
            blob, outcome = await cache.get_or_fetch(pointer, from_redis)
            if metrics:
                metrics.host_cache.labels(outcome).inc()
    except AdapterRejected as e:
        if metrics:
            metrics.rejected.labels(e.reason).inc()
        log.error("rejected adapter: %s", e)
        raise
    if metrics:
        metrics.fetch_seconds.observe(time.perf_counter() - start)
    return Adapter(pointer, blob)


async def read_chunks(
    link: Link, pointer: AdapterPointer, concurrency: int = 2, chunks_per_call: int = 2
) -> memoryview:
    """Read the chunks of `pointer` into one buffer and verify it (size, sha256, layout).

    Round trips of `chunks_per_call` pipelined GETs, at most `concurrency` in flight; their
    replies are taken in order, each chunk copied once into place and hashed in a thread
    while later round trips are on the wire. The buffer is a writable memoryview (of a
    numpy array, allocated without zeroing)."""
    version = pointer.version
    calls = [
        pointer.chunk_keys[i : i + chunks_per_call]
        for i in range(0, len(pointer.chunk_keys), chunks_per_call)
    ]
    blob = np.empty(pointer.size, dtype=np.uint8)  # not zeroed: every byte is written below
    view = memoryview(blob)
    sha = hashlib.sha256()
    filled = missing = 0
    waiting = iter(calls)
    in_flight: deque[asyncio.Task[list[bytes | None]]] = deque()

    def send_next() -> None:
        keys = next(waiting, None)
        if keys is not None:
            in_flight.append(asyncio.create_task(link.call(lambda r: _per_key(r, "get", keys))))

    for _ in range(concurrency):
        send_next()
    try:
        while in_flight:
            chunks = await in_flight.popleft()
            send_next()
            begin = filled
            for chunk in chunks:
                if chunk is None:
                    missing += 1
                elif not missing:
                    if filled + len(chunk) > pointer.size:
                        raise AdapterRejected(
                            "size_mismatch",
                            f"version {version}: more than {pointer.size} bytes",
                        )
                    view[filled : filled + len(chunk)] = chunk  # a memcpy, under the GIL
                    filled += len(chunk)
            if filled - begin >= THREAD_HASH_BYTES:  # hashlib releases the GIL
                await asyncio.to_thread(sha.update, view[begin:filled])
            else:  # a thread hop costs more than hashing a few KiB
                sha.update(view[begin:filled])
    finally:  # a rejection or a cancel leaves no read running
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
    if missing:
        raise AdapterRejected("missing_chunk", f"version {version}: {missing} chunk(s) gone")
    if filled != pointer.size:
        raise AdapterRejected(
            "size_mismatch", f"version {version}: {filled} != {pointer.size} bytes"
        )
    if (digest := sha.hexdigest()) != pointer.sha256:
        raise AdapterRejected(
            "sha256_mismatch", f"version {version}: {digest[:12]} != {pointer.sha256[:12]}"
        )
    try:
        layout(blob)  # the header only: the engine's parse views the tensors in place
    except ValueError as e:
        raise AdapterRejected("bad_safetensors", f"version {version}: {e}") from None
    return view


async def _per_key(client, command: str, keys: list[str]) -> list:
    """`command` (GET, EXISTS: one key each) for every key, in one round trip (a pipeline;
    on a cluster, one per node)."""
    if len(keys) == 1:
        return [await getattr(client, command)(keys[0])]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        getattr(pipe, command)(key)
    return await pipe.execute()


class AdapterFollower:
    """Follows the `weights` stream and reports the newest pointer not yet seen."""

    def __init__(self, link: Link, keys: Keys):
        self.link = link
        self.key = keys.stream(WEIGHTS)
        self.last_id = "0-0"
        self.newest: AdapterPointer | None = None

    async def poll(self, block_ms: int | None = None) -> AdapterPointer | None:
        """A pointer newer than any returned before, or None. Reads the whole tail once,
        so a process that was down catches up directly to the newest version."""
        if self.last_id == "0-0":
            resp = await self.link.call(lambda r: r.xrevrange(self.key, count=1))
            entries = resp
        else:
            resp = await self.link.call(
                lambda r: r.xread({self.key: self.last_id}, count=1000, block=block_ms or None)
            )
            entries = resp[0][1] if resp else []
        fresh = None
        for eid, fields in entries:
            self.last_id = max(self.last_id, eid.decode(), key=_id_key)
            try:
                pointer = decode(fields.get(FIELD, b""))
            except ProtocolError as e:
                log.error("ignoring malformed adapter pointer %s: %s", eid, e)
                continue
            if not isinstance(pointer, AdapterPointer):
                log.error("ignoring %s on the weights stream", type(pointer).__name__)
                continue
            if self.newest is None or pointer.version > self.newest.version:
                self.newest = fresh = pointer
        return fresh


def _id_key(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)
