"""Adapter chunks against a real Redis. Publish (`AdapterPublisher`): a version writes only
the chunks that changed since the one before, reused keys outlive the versions that wrote
them, and a reused key Redis lost is written again. Fetch (`read_chunks`): pipelined round
trips put every byte in place for any split of chunks into calls, and each way a published
version can be broken is rejected with its reason."""

from __future__ import annotations

import asyncio

import pytest
import torch
from safetensors.torch import save

from protocol.adapters import (
    AdapterMetrics,
    AdapterPublisher,
    AdapterRejected,
    chunk_cuts,
    fetch_adapter,
    publish_adapter,
    read_chunks,
)
from protocol.config import RedisConfig
from protocol.metrics import Metrics
from protocol.streams import Keys, Link
from tests.support.adapters import adapter_pointer

KEYS = Keys("f")


def blob(seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return save(
        {
            "m.lora_A.weight": torch.randn(40, 96, generator=g),
            "m.lora_B.weight": torch.randn(96, 40, generator=g).to(torch.bfloat16),
        }
    )


def run(url: str, coro_fn):
    async def go():
        link = Link(RedisConfig(url=url, run_id="f", socket_timeout=5))
        try:
            return await coro_fn(link)
        finally:
            await link.close()

    return asyncio.run(go())


@pytest.mark.parametrize(("concurrency", "per_call"), [(1, 1), (2, 3), (4, 2), (3, 16)])
def test_every_split_into_round_trips_gives_the_published_bytes(
    redis_server, concurrency, per_call
):
    data = blob()
    chunk = 1000  # 25 chunks of a 23 KB blob: no per_call divides them

    async def go(link):
        pointer = await publish_adapter(link, KEYS, 1, data, {"r": 8}, "tiny", chunk_bytes=chunk)
        assert len(pointer.chunk_keys) == len(chunk_cuts(data, chunk)) == 25
        got = await read_chunks(link, pointer, concurrency, per_call)
        return pointer, got

    pointer, got = run(redis_server.url, go)
    assert not got.readonly and got == data
    assert len(pointer.chunk_keys) > 16


def broken(redis_server, data: bytes, chunks: list[bytes | None]):
    """Write `chunks` (None: never written) and fetch a pointer to them for `data`."""
    keys = [KEYS.adapter_chunk(9, i) for i in range(len(chunks))]
    r = redis_server.client()
    for key, value in zip(keys, chunks, strict=True):
        if value is not None:
            r.set(key, value)

    async def go(link):
        return await fetch_adapter(link, adapter_pointer(data, keys, 9, run="f"), chunks_per_call=2)

    with pytest.raises(AdapterRejected) as err:
        run(redis_server.url, go)
    return err.value.reason


def test_each_broken_version_is_rejected_with_its_reason(redis_server):
    data = blob()
    half = len(data) // 2
    a, b = data[:half], data[half:]
    assert broken(redis_server, data, [a, None]) == "missing_chunk"
    assert broken(redis_server, data, [a, b + b"x"]) == "size_mismatch"  # one byte too many
    assert broken(redis_server, data, [a, b[:-1]]) == "size_mismatch"  # one byte short
    flipped = bytes([b[0] ^ 1]) + b[1:]
    assert broken(redis_server, data, [a, flipped]) == "sha256_mismatch"
    # the right sha256 of bytes that are not safetensors: refused by the layout check
    junk = b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 40
    assert broken(redis_server, junk, [junk[:20], junk[20:]]) == "bad_safetensors"


def layers(values: list[float]) -> dict[str, torch.Tensor]:
    """Four 16 KB tensors, one per value: with 40 KB chunks, two tensors to a chunk."""
    return {f"l{i}.lora_A.weight": torch.full((64, 64), float(v)) for i, v in enumerate(values)}


def test_a_version_writes_only_the_chunks_that_changed(redis_server):
    chunk = 40_000
    metrics = AdapterMetrics(Metrics("pub"))

    def written() -> float:
        return metrics.written_bytes._value.get()

    async def go(link):
        pub = AdapterPublisher(link, KEYS, "tiny", chunk_bytes=chunk, keep=2, metrics=metrics)
        v1 = save(layers([1, 2, 3, 4]))
        p1 = await pub.publish(1, v1, {"r": 8})
        assert written() == len(v1) and len(p1.chunk_keys) == 2
        assert chunk_cuts(v1, chunk)[0][1] > 2 * 16384  # the header travels with l0 and l1
        # l3 changes: the second chunk (l2, l3) is written, the first is named again
        v2 = save(layers([1, 2, 3, 5]))
        p2 = await pub.publish(2, v2, {"r": 8})
        assert p2.chunk_keys == [KEYS.adapter_chunk(1, 0), KEYS.adapter_chunk(2, 1)]
        assert written() == len(v1) + (len(v2) - chunk_cuts(v2, chunk)[1][0])
        assert await read_chunks(link, p2) == v2
        # versions 3 and 4 change only l3: chunk 1:0 is still named, so it outlives keep=2
        for version in (3, 4):
            p = await pub.publish(version, save(layers([1, 2, 3, 5 + version])), {"r": 8})
        assert p.chunk_keys[0] == KEYS.adapter_chunk(1, 0)
        assert await read_chunks(link, p) == save(layers([1, 2, 3, 9]))
        return p

    run(redis_server.url, go)
    r = redis_server.client()
    left = sorted(k.decode().removeprefix("gpo:f:") for k in r.keys("gpo:f:adapter:*"))
    # keep=2: versions 3 and 4 name 1:0, 3:1 and 4:1; 2:1 went with version 2
    assert left == ["adapter:1:0", "adapter:3:1", "adapter:4:1"]
    # Redis loses a chunk the next version would name: it is written again, not named

    async def after_loss(link):
        pub = AdapterPublisher(link, KEYS, "tiny", chunk_bytes=chunk, keep=2)
        p6 = await pub.publish(6, save(layers([1, 2, 3, 6])), {"r": 8})
        r.delete(p6.chunk_keys[0])
        p7 = await pub.publish(7, save(layers([1, 2, 3, 7])), {"r": 8})
        assert p7.chunk_keys[0] == KEYS.adapter_chunk(7, 0)  # not the lost 6:0
        return await read_chunks(link, p7)

    assert run(redis_server.url, after_loss) == save(layers([1, 2, 3, 7]))
