"""`gpo experiment offline`: the pure parts (equal cuts, mean ± std, tables, report-only)."""

from __future__ import annotations

import json

import pytest

from ops.experiments.offline import Settings, main
from ops.experiments.offline_report import (
    aggregate,
    cut_to_equal,
    mean_std,
    reading,
    report,
    spread,
)


def _pairs(counts: dict[str, int]) -> list[dict]:
    return [{"prompt_id": pid, "k": k} for pid, n in counts.items() for k in range(n)]


def test_spread_takes_prompts_round_robin_and_keeps_order():
    pairs = _pairs({"a": 3, "b": 1, "c": 2})
    assert [(p["prompt_id"], p["k"]) for p in spread(pairs, 4)] == [
        ("a", 0),
        ("a", 1),
        ("b", 0),
        ("c", 0),
    ]
    assert spread(pairs, 10) == pairs
    assert spread(pairs, 0) == []


def test_cut_to_equal_gives_both_arms_the_smaller_count():
    critical = _pairs({"a": 4, "b": 4, "c": 3})
    whole = _pairs({p: 1 for p in "abcdefg"})
    c, w = cut_to_equal(critical, whole)
    assert len(c) == len(w) == 7
    assert {p["prompt_id"] for p in c} == {"a", "b", "c"}  # every prompt keeps pairs
    assert w == whole
    c, w = cut_to_equal(critical[:2], whole)
    assert len(c) == len(w) == 2 and w == whole[:2]


def test_mean_std_against_hand_numbers():
    assert mean_std([0.2, 0.4, 0.6]) == pytest.approx((0.4, 0.2))
    assert mean_std([0.3]) == (0.3, 0.0)


def _result(seed: int, base: float, critical: float, whole: float) -> dict:
    return {
        "seed": seed,
        "command": "gpo experiment offline",
        "model": "/cache/bootstrap/x",
        "settings": json.loads(json.dumps(Settings().__dict__)),
        "pass_at_1": {"base": base, "critical": critical, "whole": whole},
        "pairs": {
            "critical_found": 258,
            "critical_prompts": 100,
            "whole_found": 256,
            "whole_prompts": 370,
            "used": 256,
        },
        "seconds": {"total": 180.0, "pairs_critical": 60.0, "pairs_whole": 60.0},
        "machine": "2 CPU cores",
    }


def test_aggregate_and_report():
    results = [
        _result(0, 0.30, 0.36, 0.32),
        _result(1, 0.31, 0.36, 0.30),
        _result(2, 0.29, 0.34, 0.31),
    ]
    agg = aggregate(results)
    assert agg["arms"]["critical"] == pytest.approx((0.3533333, 0.0115470), abs=1e-6)
    assert agg["diffs"]["critical - whole"] == pytest.approx((0.0433333, 0.0152753), abs=1e-6)
    body = report(results, "gpo experiment offline", "2 CPU cores")
    assert "| mean ± std (3 seeds) | 0.300 ± 0.010 | 0.353 ± 0.012 | 0.310 ± 0.010 |" in body
    assert "+0.040 +0.060 +0.030" in body
    assert "more than twice its spread" in body
    even = [_result(0, 0.3, 0.33, 0.30), _result(1, 0.3, 0.30, 0.33)]
    assert "no difference shown" in reading(even)


def test_report_only_rebuilds_from_results_files(tmp_path, capsys):
    for seed in (0, 1):
        (tmp_path / f"seed-{seed}").mkdir()
        r = _result(seed, 0.3, 0.35 + seed / 100, 0.32)
        (tmp_path / f"seed-{seed}" / "results.json").write_text(json.dumps(r))
    assert main(["--report-only", "--out", str(tmp_path), "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 0.300 | 0.360 | 0.320 | +0.040 | 256 | 3.0 |" in out
    assert main(["--report-only", "--out", str(tmp_path / "none")]) == 2
