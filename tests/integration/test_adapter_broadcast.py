"""RELIABILITY.md test 16: adapter broadcast to 8 followers with one down, and a corrupted
chunk. Live followers load each good version, reject the corrupted one by sha256, and the
late follower catches up straight to the newest version.

And one fetch per host: 8 follower processes sharing a host cache read each version from
Redis once between them (the server counts the GETs), and each loads it."""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time

import torch
from safetensors.torch import save

from protocol.adapters import publish_adapter
from protocol.codec import encode
from protocol.config import RedisConfig
from protocol.consumer import FIELD
from protocol.metrics import Metrics, TransportMetrics
from protocol.streams import WEIGHTS, Keys, Link
from tests.support.adapters import adapter_pointer
from tests.support.workload import ROOT

KEYS = Keys("t")
CHUNK = 64 * 1024


def blob(value: float) -> bytes:
    return save(
        {
            "a.lora_A.weight": torch.full((64, 512), value),
            "a.lora_B.weight": torch.full((512, 64), value),
        }
    )


class Follower:
    def __init__(self, url: str, cache: str = "off"):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.follower", "--url", url, "--cache", cache],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.seen: list[str] = []

    def ready(self) -> Follower:
        self.expect("ready", timeout=60)
        return self

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, prefix: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"expected {prefix!r}, saw {self.seen}")

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(10)


def publish(url: str, version: int, data: bytes, corrupt: bool = False, absurd: bool = False):
    """Publish `data` as `version`; `corrupt`: one chunk flipped; `absurd`: a pointer whose
    LoRA config asks peft for more than LoRA (`modules_to_save`), written raw."""

    async def go():
        cfg = RedisConfig(url=url, run_id="t", socket_timeout=3, block_ms=500)
        link = Link(cfg, TransportMetrics(Metrics("pub")))
        if absurd:
            ptr = adapter_pointer(
                data,
                [KEYS.adapter_chunk(version, 0)],
                version,
                lora_config={"r": 8, "modules_to_save": ["lm_head"]},
            )
            await link.client.xadd(KEYS.stream(WEIGHTS), {FIELD: encode(ptr)})
        elif not corrupt:
            await publish_adapter(
                link,
                KEYS,
                version,
                data,
                {"r": 8, "target_modules": ["q_proj"]},
                "tiny",
                chunk_bytes=CHUNK,
                keep=2,
            )
        else:  # what a flipped bit in one chunk looks like: the pointer's sha256 no longer matches
            keys = [
                KEYS.adapter_chunk(version, i) for i in range(0, (len(data) + CHUNK - 1) // CHUNK)
            ]
            for i, k in enumerate(keys):
                chunk = data[i * CHUNK : (i + 1) * CHUNK]
                if i == 1:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                await link.client.set(k, chunk)
            ptr = adapter_pointer(data, keys, version)
            await link.client.xadd(KEYS.stream(WEIGHTS), {FIELD: encode(ptr)})
        await link.close()

    asyncio.run(go())


def test_16_broadcast_with_one_down_and_a_corrupted_chunk(redis_server):
    followers = [Follower(redis_server.url) for _ in range(7)]  # the 8th is down for now
    try:
        for f in followers:
            f.ready()
        publish(redis_server.url, 1, blob(1.0))
        expected_v1 = 2 * 64 * 512 * 1.0
        for f in followers:
            assert f.expect("loaded 1") == f"loaded 1 {expected_v1:.1f}"
        publish(redis_server.url, 2, blob(2.0), corrupt=True)
        for f in followers:
            assert f.expect("rejected 2") == "rejected 2 sha256_mismatch"
        publish(redis_server.url, 3, blob(3.0))
        for f in followers:
            f.expect("loaded 3")
        late = Follower(redis_server.url)
        followers.append(late)
        late.ready()
        assert late.expect("loaded") == f"loaded 3 {3 * expected_v1:.1f}"  # straight to the newest
        r = redis_server.client()
        assert r.exists(KEYS.adapter_chunk(1, 0)) == 0, (
            "chunks older than keep=2 versions must be deleted"
        )
        assert r.exists(KEYS.adapter_chunk(3, 0)) == 1
        assert len(blob(1.0)) > 2 * CHUNK  # the adapter really spans several chunks
        # a pointer that decodes but asks for more than LoRA is refused at decode: nobody
        # fetches it, and it does not become the version anyone waits for
        publish(redis_server.url, 4, blob(4.0), absurd=True)
        publish(redis_server.url, 5, blob(5.0))
        for f in followers:
            assert f.expect("loaded") == f"loaded 5 {5 * expected_v1:.1f}"
            assert not any(" 4" in line for line in f.seen), f.seen
    finally:
        for f in followers:
            assert f.stop() == 0


def get_calls(r) -> int:
    """GET commands the server has answered since its last CONFIG RESETSTAT."""
    return int(r.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


def test_eight_processes_on_one_host_make_one_fetch_and_eight_loads(redis_server, tmp_path):
    cache = tmp_path / "host-cache"
    followers = [Follower(redis_server.url, cache=str(cache)) for _ in range(8)]
    r = redis_server.client()
    expected = 2 * 64 * 512
    chunks = -(-len(blob(1.0)) // CHUNK)
    assert chunks >= 3
    try:
        for f in followers:
            f.ready()
        for version in (1, 2):
            r.config_resetstat()
            publish(redis_server.url, version, blob(float(version)))
            for f in followers:
                assert f.expect(f"loaded {version}") == f"loaded {version} {version * expected:.1f}"
            assert get_calls(r) == chunks, "8 processes on one host: one fetch from Redis"
        files = sorted(p.name for p in cache.glob("*/*.safetensors"))
        assert [name.split("-")[0] for name in files] == ["0000000001", "0000000002"]
        # a cached file that changed on disk fails its sha256: deleted, fetched once again
        late = Follower(redis_server.url, cache=str(cache))
        followers.append(late)
        newest = next(cache.glob("*/0000000002-*.safetensors"))
        data = bytearray(newest.read_bytes())
        data[-1] ^= 0xFF
        newest.write_bytes(data)
        r.config_resetstat()
        late.ready()
        assert late.expect("loaded") == f"loaded 2 {2 * expected:.1f}"
        assert get_calls(r) == chunks
        assert newest.read_bytes() == blob(2.0)  # the file was replaced by the good one
    finally:
        for f in followers:
            assert f.stop() == 0
