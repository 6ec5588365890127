"""Adapter broadcast: LoRA weights as chunked keys plus a pointer on the `weights` stream.

Publish: the safetensors bytes are split into chunks (default 4 MiB: large values stall
Redis and blow up client buffers) written to `adapter:<version>:<i>`, then an AdapterPointer
(version, sha256, size, chunk keys, LoRA config, base model) goes on `weights`. Versions
older than the last `keep` have their chunks deleted, found through the run's chunk index
(`Keys.adapter_index`, a sorted set scored by version; no SCAN, so it works on a cluster).
Fetch: chunks are read with bounded concurrency, joined, checked against size and sha256,
and parsed only with safetensors. A mismatch is rejected (`AdapterRejected`) and counted;
it is never loaded. `AdapterFollower` tells a process when a newer version exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass

from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from protocol.codec import ProtocolError, decode, encode
from protocol.consumer import FIELD
from protocol.messages import AdapterPointer
from protocol.metrics import Metrics
from protocol.streams import WEIGHTS, Keys, Link

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 * 1024 * 1024
WEIGHTS_STREAM_MAXLEN = 1000  # pointers only; every reader needs just the newest


class AdapterRejected(ValueError):
    """A published adapter that failed verification; `reason` is machine-readable."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Adapter:
    """A verified adapter version, ready for `Engine.load_adapter`."""

    pointer: AdapterPointer
    safetensors_bytes: bytes


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


async def publish_adapter(
    link: Link,
    keys: Keys,
    version: int,
    safetensors_bytes: bytes,
    lora_config: dict,
    base_model: str,
    *,
    chunk_bytes: int = CHUNK_BYTES,
    keep: int = 3,
    metrics: AdapterMetrics | None = None,
) -> AdapterPointer:
    """Write the chunks, then the pointer; delete chunks of versions older than `keep`."""
    start = time.perf_counter()
    chunks = [
        safetensors_bytes[i : i + chunk_bytes]
        for i in range(0, len(safetensors_bytes), chunk_bytes)
    ]
    chunk_keys = [keys.adapter_chunk(version, i) for i in range(len(chunks))]
    # indexed before written: a crash in between leaves no chunk that nobody would delete
    await link.call(lambda r: r.zadd(keys.adapter_index(), dict.fromkeys(chunk_keys, version)))
    for key, chunk in zip(
        chunk_keys, chunks, strict=True
    ):  # one value per call: no 100 MB pipelines
        await link.call(lambda r, k=key, c=chunk: r.set(k, c))
    pointer = AdapterPointer(
        id=f"adapter:{version}",
        run=keys.run_id,
        ts=time.time(),
        version=version,
        base_model=base_model,
        lora_config=lora_config,
        sha256=hashlib.sha256(safetensors_bytes).hexdigest(),
        size=len(safetensors_bytes),
        chunk_keys=chunk_keys,
    )
    raw = encode(pointer)
    await link.call(
        lambda r: r.xadd(
            keys.stream(WEIGHTS), {FIELD: raw}, maxlen=WEIGHTS_STREAM_MAXLEN, approximate=True
        )
    )
    await _delete_old_versions(link, keys, version - keep)
    if metrics:
        metrics.publish_seconds.observe(time.perf_counter() - start)
        metrics.published_bytes.inc(len(safetensors_bytes))
    return pointer


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
    concurrency: int = 4,
    metrics: AdapterMetrics | None = None,
) -> Adapter:
    """Fetch the chunks of `pointer` (at most `concurrency` at a time) and verify them."""
    start = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)

    async def get(key: str) -> bytes | None:
        async with gate:
            return await link.call(lambda r: r.get(key))

    chunks = await asyncio.gather(*(get(k) for k in pointer.chunk_keys))
    try:
        if any(c is None for c in chunks):
            missing = sum(c is None for c in chunks)
            raise AdapterRejected(
                "missing_chunk", f"version {pointer.version}: {missing} chunk(s) gone"
            )
        blob = b"".join(chunks)
        if len(blob) != pointer.size:
            raise AdapterRejected(
                "size_mismatch", f"version {pointer.version}: {len(blob)} != {pointer.size} bytes"
            )
        digest = hashlib.sha256(blob).hexdigest()
        if digest != pointer.sha256:
            raise AdapterRejected(
                "sha256_mismatch",
                f"version {pointer.version}: {digest[:12]} != {pointer.sha256[:12]}",
            )
        try:
            load_safetensors(blob)  # parse check only: safetensors, never pickle
        except (SafetensorError, ValueError) as e:
            raise AdapterRejected("bad_safetensors", f"version {pointer.version}: {e}") from None
    except AdapterRejected as e:
        if metrics:
            metrics.rejected.labels(e.reason).inc()
        log.error("rejected adapter: %s", e)
        raise
    if metrics:
        metrics.fetch_seconds.observe(time.perf_counter() - start)
    return Adapter(pointer, blob)


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
