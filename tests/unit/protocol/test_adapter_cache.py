"""protocol.adapter_cache: one fetch per version among everyone sharing the directory, files
verified on read, old versions pruned, and a fetch that fails leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from protocol.adapter_cache import HostCache
from protocol.adapters import AdapterRejected
from protocol.messages import AdapterPointer
from tests.support.adapters import adapter_pointer


def pointer(version: int, data: bytes) -> AdapterPointer:
    return adapter_pointer(data, [f"k{version}"], version)


class Redis:
    """Stands for the fetch from Redis: counts calls, takes a while, can fail."""

    def __init__(self, data: bytes, fail: bool = False):
        self.data, self.fail, self.calls = data, fail, 0

    async def fetch(self) -> bytearray:
        self.calls += 1
        await asyncio.sleep(0.05)
        if self.fail:
            raise AdapterRejected("missing_chunk", "gone")
        return bytearray(self.data)


def test_eight_readers_of_one_directory_make_one_fetch(tmp_path):
    data = b"weights" * 1000
    p, redis = pointer(1, data), Redis(data)
    caches = [HostCache(tmp_path, "run") for _ in range(8)]  # flock: one fd each

    async def go():
        return await asyncio.gather(*(c.get_or_fetch(p, redis.fetch) for c in caches))

    got = asyncio.run(go())
    assert redis.calls == 1
    assert sorted(outcome for _, outcome in got) == ["fetched"] + ["hit"] * 7
    assert all(blob == data for blob, _ in got)
    assert caches[0].path(p).read_bytes() == data


def test_a_file_that_fails_verification_is_deleted_and_fetched_again(tmp_path):
    data = b"weights" * 1000
    p, redis = pointer(1, data), Redis(data)
    cache = HostCache(tmp_path, "run")
    cache.write(p, data)
    cache.path(p).write_bytes(data[:-1] + b"X")  # same size, other bytes
    assert cache.read(p) == (None, "bad")
    assert not cache.path(p).exists()
    cache.path(p).write_bytes(data[:-1])  # short
    blob, outcome = asyncio.run(cache.get_or_fetch(p, redis.fetch))
    assert (blob, outcome, redis.calls) == (data, "bad", 1)
    assert cache.read(p) == (data, "hit")


def test_a_failed_fetch_writes_nothing_and_the_next_reader_tries_again(tmp_path):
    data = b"weights" * 10
    p = pointer(1, data)
    cache = HostCache(tmp_path, "run")
    with pytest.raises(AdapterRejected):
        asyncio.run(cache.get_or_fetch(p, Redis(data, fail=True).fetch))
    assert not cache.path(p).exists()
    redis = Redis(data)
    assert asyncio.run(cache.get_or_fetch(p, redis.fetch)) == (data, "fetched")
    assert redis.calls == 1


def test_writes_keep_the_newest_versions_and_drop_stale_scopes(tmp_path):
    cache = HostCache(tmp_path, "run", keep=2)
    stale = tmp_path / "other-run"
    stale.mkdir()
    (stale / "0000000001-x.safetensors").write_bytes(b"old")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / "live-run"
    fresh.mkdir()
    for v in range(1, 6):
        data = f"v{v}".encode()
        asyncio.run(cache.get_or_fetch(pointer(v, data), Redis(data).fetch))
    names = sorted(p.name.split("-")[0] for p in cache.dir.glob("*.safetensors"))
    assert names == ["0000000004", "0000000005"]
    assert not list(cache.dir.glob("0000000001-*"))  # lock files go with their versions
    assert not stale.exists() and fresh.exists()


def test_scopes_separate_runs_and_servers_and_off_means_none(tmp_path):
    a = HostCache.for_run(str(tmp_path), "redis://:secret@127.0.0.1:7000/0", "run")
    b = HostCache.for_run(str(tmp_path), "redis://:secret@127.0.0.1:7001/0", "run")
    c = HostCache.for_run(str(tmp_path), "redis://:secret@127.0.0.1:7000/0", "run2")
    assert a is not None and b is not None and c is not None
    assert len({a.dir, b.dir, c.dir}) == 3 and a.dir.parent == tmp_path
    assert "secret" not in str(a.dir)
    assert HostCache.for_run("off", "redis://127.0.0.1:7000/0", "run") is None
