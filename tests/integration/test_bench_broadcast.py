"""gpo bench broadcast on tiny sizes: every reader got the published bytes, the adapter left
in Redis is the benchmark's blob, and the table's ratios are the timings' ratios.

No speed is asserted (timings on a shared machine are noisy)."""

from __future__ import annotations

import asyncio

import pytest

from ops.bench import broadcast as bb
from protocol.adapters import AdapterFollower, fetch_adapter
from protocol.config import RedisConfig
from protocol.streams import Keys, Link


def test_broadcast_case_rounds_and_bytes(redis_server):
    rounds, peak = asyncio.run(bb.broadcast_case(redis_server.url, 1, 3, repeats=2))
    assert len(rounds) == 2
    for publish, fetch, total, copy in rounds:
        # readers can finish before publish_adapter returns: publish need not be <= total
        assert publish > 0 and 0 < fetch <= total and copy > 0
    assert peak > 0

    async def newest() -> tuple[int, bytes]:
        link = Link(RedisConfig(url=redis_server.url, run_id="b1x3"))
        pointer = await AdapterFollower(link, Keys("b1x3")).poll()
        adapter = await fetch_adapter(link, pointer)
        await link.close()
        return pointer.version, adapter.safetensors_bytes

    version, blob = asyncio.run(newest())
    assert version == 4  # warm-up versions 1 and 2, then 3 and 4
    assert blob == bb.safetensors_blob(1)
    # keep=1: only the newest version's chunks are left
    assert {k.decode() for k in redis_server.client().keys("gpo:b1x3:adapter:*")} == {
        "gpo:b1x3:adapter:4:0"
    }


def test_main_prints_rows_whose_ratio_is_the_timings_ratio(capsys):
    assert bb.main(["--sizes", "1", "--readers", "1,2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.lstrip().startswith("1  ")]
    assert [r[:2] for r in rows] == [["1", "1"], ["1", "2"]], out
    for r in rows:
        publish, fetch, total, mbps, copy, copy_mbps = map(float, r[2:8])
        delivered = 2**20 * int(r[1]) / 1e6
        # printed ms are rounded: 0.1 ms for the broadcast, 0.001 ms for the copy
        assert float(r[8].rstrip("x")) == pytest.approx(total / copy, rel=0.05, abs=0.1)
        assert mbps == pytest.approx(delivered / (total / 1e3), rel=0.02, abs=1)
        assert copy_mbps == pytest.approx(delivered / (copy / 1e3), rel=0.05, abs=1)
    assert "Broadcasting a 1 MiB adapter to 2 reader(s)" in out
