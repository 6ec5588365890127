"""The benchmarks' table arithmetic and RESULTS.md bodies, checked against hand numbers."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest

from learner.config import PpoSettings
from ops.bench import broadcast as bb
from ops.bench import learner_update as bl
from ops.bench.engine import Row as EngineRow
from ops.bench.engine import markdown as engine_markdown
from ops.bench.engine import reading as engine_reading
from ops.bench.transport import results_markdown
from ops.harness import bench_body
from protocol.messages import Trajectory


def test_broadcast_row_rates_and_ratio():
    # 16 MiB to 4 readers: 4 * 16 * 2^20 bytes = 67.108864 MB delivered
    r = bb.Row(16, 4, publish_s=0.1, fetch_s=0.3, broadcast_s=0.5, copy_s=0.02)
    assert r.delivered_mb == pytest.approx(67.108864)
    assert r.broadcast_mbps == pytest.approx(67.108864 / 0.5)
    assert r.copy_mbps == pytest.approx(67.108864 / 0.02)
    assert r.ratio == pytest.approx(25.0)


def test_broadcast_median_row_is_per_column():
    rounds = [(0.1, 0.5, 0.9, 0.01), (0.3, 0.2, 0.7, 0.03), (0.2, 0.4, 0.8, 0.02)]
    r = bb.median_row(1, 8, rounds)
    assert (r.publish_s, r.fetch_s, r.broadcast_s, r.copy_s) == (0.2, 0.4, 0.8, 0.02)
    assert (r.size_mib, r.readers) == (1, 8)


def test_broadcast_table_cells():
    r = bb.Row(
        64, 1, 0.25, 0.5, 1.0, 0.05, client_peak_mib=700.4, redis_peak_mib=150.6, ceiling_mbps=268.4
    )
    (cells,) = bb.table_rows([r])
    assert dict(zip(bb.HEADER, cells, strict=True)) == {
        "adapter MiB": "64",
        "readers": "1",
        "publish ms": "250.0",
        "fetch ms": "500.0",
        "broadcast ms": "1000.0",
        "MB/s": "67",  # 64 MiB = 67.1 MB in 1 s
        "memory copy ms": "50.000",
        "copy MB/s": "1342",
        "broadcast / copy": "20.0x",
        "client peak MiB": "700",
        "redis peak MiB": "151",
        "GET ceiling MB/s": "268",
        "broadcast / ceiling": "25%",  # 67.1 of 268.4 MB/s
    }
    lines = bb.format_table([r]).splitlines()
    assert len(lines) == 2 and lines[1].split()[-5:] == ["20.0x", "700", "151", "268", "25%"]


def test_broadcast_reading_states_the_measured_ratios():
    rows = [
        bb.Row(16, 1, 0.1, 0.2, 0.3, 0.01, 400, 60),
        bb.Row(16, 8, 0.1, 0.5, 0.6, 0.08, 600, 200),
    ]
    text = bb.reading(rows, base_mib=300)
    assert "took 0.60 s" in text and "8x the time of 8 plain memory copies" in text
    assert "2.0x to 2.0x the one-reader latency" in text  # 0.6 / 0.3
    assert "(readers + 3) x size = 176 MiB" in text and "(160 MiB;" in text  # 2*16 + 8*4*4
    assert "300 MiB above its 300 MiB" in text
    assert "Redis grew by 140 MiB, against 112 MiB" in text  # 200 - 60; 7 x 16


def test_broadcast_reading_compares_with_the_get_ceiling():
    # 16 MiB to 8 readers in 0.6 s: 134.2 MB / 0.6 s = 223.7 MB/s, of a 447.4 MB/s ceiling
    rows = [bb.Row(16, 8, 0.1, 0.5, 0.6, 0.08, 600, 200, 447.4)]
    text = bb.reading(rows, base_mib=300)
    assert "from 8 client(s) moved 447 MB/s: the broadcast delivered 50% of" in text
    assert "moved" not in bb.reading([bb.Row(16, 8, 0.1, 0.5, 0.6, 0.08, 600, 200)], 300)


def test_safetensors_blob_size_and_peak_rss():
    blob = bb.safetensors_blob(1)
    assert 2**20 <= len(blob) < 2**20 + 1024  # 1 MiB of fp32 plus a small header
    assert bb.peak_rss_mib() >= bb.peak_rss_mib(field="VmRSS") > 0
    assert np.isnan(bb.peak_rss_mib(pid=2**31))


def test_memory_copies_times_every_reader():
    assert bb.memory_copies(b"x" * 1000, 3) >= 0.0


def test_learner_ratio_and_table():
    floor = bl.Row("floor", 2.0, 1000, 400)
    learner = bl.Row("learner", 4.0, 1000, 400)
    assert floor.tokens_per_s == 500 and learner.trained_per_s == 100
    assert bl.speed_ratio(learner, floor) == 0.5
    cells = bl.table_rows([floor, learner])
    assert cells[1] == ["learner", "4000.0", "250", "100", "0.50x"]
    assert bl.format_table([floor, learner]).splitlines()[2].split()[-1] == "0.50x"


def test_learner_reading_states_the_saving_of_the_skipped_pi_old_pass():
    rows = [bl.Row("f", 1.0, 100, 50), bl.Row("l", 1.5, 100, 50), bl.Row("p", 2.0, 100, 50)]
    cfg = bl.LearnerConfig(model="m", ppo=PpoSettings(epochs=1, minibatches=1))
    samples = [_sample("reset", 10), _sample("fresh", 12)]
    text = bl.reading(rows, samples, cfg, mbs=1, skipped=True)
    assert "0.67x the 100 tokens/s" in text and "(1.50x its time)" in text
    assert "2 samples (1 resets" in text and "10-12 per sample" in text
    assert "with the pass the update takes 2000 ms (0.50x the floor's speed)" in text
    assert "saves 500 ms per update (25%)" in text
    text = bl.reading(
        rows, samples, bl.LearnerConfig(model="m", ppo=PpoSettings(epochs=2)), 1, skipped=False
    )
    assert "pi_old pass is needed" in text and "(500 ms above the floor)" in text
    assert "saves" not in text


def test_mc_like_result_values_and_critical_step():
    traj = _trajectory(spans=[(0, 2), (2, 4), (4, 6)], reward=1.0)
    r = bl._mc_like_result(traj, np.random.default_rng(0))
    assert r.values.shape == (4,) and r.values[-1] == 1.0
    assert np.all(np.isin(r.values[:-1], [0, 0.25, 0.5, 0.75, 1.0]))
    np.testing.assert_allclose(r.advantages, np.diff(r.values))
    if np.abs(r.advantages).max() > 0:
        assert r.critical_step == int(np.argmax(np.abs(r.advantages)))


def test_engine_markdown_and_reading():
    rows = [
        EngineRow("generate() batch 2", 1.0, 100),
        EngineRow("engine batch 2", 2.0, 100, "generate() batch 2"),
        EngineRow("forward-only floor batch 2", 0.5, 100, "generate() batch 2"),
        EngineRow("estimator 2x2 prefix off", 1.0, 40),
        EngineRow("estimator 2x2 prefix request", 0.5, 40, "estimator 2x2 prefix off"),
        EngineRow("estimator 2x2 prefix shared", 0.25, 40, "estimator 2x2 prefix off"),
    ]
    args = argparse.Namespace(
        model=None,
        hidden_size=32,
        layers=1,
        dtype="float32",
        device="cpu",
        repeats=1,
        batch=2,
        prefixes=2,
        samples=2,
    )
    table = engine_markdown(rows, args)
    assert "| engine batch 2 | 2.000 | 100 | 50 | 0.50x vs generate() batch 2 |" in table
    assert "| estimator 2x2 prefix shared | 0.250 | 40 | 160 | 4.00x vs" in table
    text = engine_reading(rows, args)
    assert "0.50x plain `model.generate`" in text and "0.25x that floor" in text
    assert "ran 2.00x the speed" in text and "across requests 4.00x" in text


def test_transport_results_markdown():
    args = argparse.Namespace(
        tokens=256, messages=100, batch=10, repeats=1, adapter_mb=4, readers=2
    )
    fetch = {"chunked 4 MiB": (0.5, 8 * 2**20), "single value": (0.4, 16 * 2**20)}
    profile = {"encode": 12.5, "decode": 40.0}
    tables, text = results_markdown(
        args, 1000, (500.0, 2.0, 4.0), (1000.0, 1.0, 2.0), 2000.0, fetch, profile
    )
    assert "| raw redis-py, same bytes, no decode | 1000 | 1.0 | 1.0 | 2.0 | 0.50 |" in tables
    assert "| redis-benchmark XADD only, -P 64 | 2000 | 2.0 | - | - | 0.25 |" in tables
    assert "| chunked 4 MiB | 0.50 | 8.0 |" in tables
    assert "0.50x the throughput" in text and "0.80: missed in this run; p50 latency 2.00x" in text
    assert "took 2000 us per message" in tables and "| decode | 40.0 |" in tables
    assert "0.25x redis-benchmark" in text and "8 MiB against 16 MiB" in text


def test_bench_body_quotes_the_command():
    body = bench_body("broadcast", ["--sizes", "1,16", "--note", "a b"], "| t |", "Reading.")
    lines = body.splitlines()
    assert lines[0] == "Command: `gpo bench broadcast --sizes 1,16 --note 'a b'`"
    assert re.match(r"Machine: \d+ CPU cores, ", lines[2])
    assert lines[4:] == ["| t |", "", "Reading."]


def _trajectory(spans, reward):
    return Trajectory(
        id="t",
        run="r",
        ts=0.0,
        prompt_id="p",
        task="arith",
        answer="1",
        kind="fresh",
        parent_id=None,
        reset_step=None,
        reset_value=None,
        prompt_len=2,
        prefix_token_ids=[3, 4],
        completion_token_ids=[5] * spans[-1][1],
        logprobs=[-1.0] * spans[-1][1],
        step_spans=spans,
        reward=reward,
        policy_version=0,
        actor="a",
        gen_seconds=0.0,
    )


def _sample(kind, n):
    from tests.support.learner import make_sample

    return make_sample(f"{kind}{n}", prompt_len=2, completion_len=n - 2, kind=kind)
