"""RELIABILITY.md test 23: a short chaos soak through the real CLI (`gpo bench chaos`).

About two minutes of faults on the demo run (tiny base policy, learner + actor + estimator
under the supervisor, a private redis-server with AOF): one of each kind, `kill -9` of the
actor, the estimator and the learner, Redis paused, Redis killed and restarted, poison in a
work stream. The learner is killed between a publish and its commit, and the streams are
trimmed as in any run. Then the bench drains, stops every process and writes its ledger to
runs/<id>/chaos.json: nothing lost, nothing trained twice, every dead-letter entry injected
poison, no restart beyond the kills, Redis memory flat. Held-out accuracy is not asserted here (two minutes are too few evaluations; the
10-minute soak of docs/RESULTS.md reports it); evaluations use 100 prompts to spare the CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ops.bench.chaos_faults import KINDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # up to 15 min warm-up (a first build of the base policy) + ~9 min
def test_chaos_soak_loses_nothing_and_trains_nothing_twice(tmp_path):
    args = ["--minutes", "2", "--mean-gap", "20", "--seed", "1", "--drain-minutes", "4"]
    args += ["--runs-dir", str(tmp_path / "runs"), "--run-id", "chaos-test"]
    args += ["--set", "learner.eval.count=100"]
    proc = subprocess.run(
        [sys.executable, "-m", "ops.bench", "chaos", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1750,
    )
    output = proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "chaos-test" / "chaos.json").read_text())
    applied = Counter(f["kind"] for f in summary["faults"] if not f["note"])
    assert all(applied[k] >= 1 for k in KINDS), (applied, output)
    ledger = summary["ledger"]
    assert ledger is not None, output
    assert ledger["lost"] == 0, (ledger["hops"], output)
    assert ledger["trained_twice"] == {}, output
    assert ledger["unexpected_dead"] == [], output
    assert ledger["dead_poison"] >= 1 and ledger["poison_missing"] == [], output
    assert ledger["trained"] > 0 and ledger["checkpoint_agrees"], output
    assert summary["resumed"] and not summary["aborted"], output
    # the learner was killed with an update out that its newest checkpoint does not hold
    learner_kills = [f for f in summary["faults"] if f["kind"] == "kill-learner"]
    assert any(f.get("uncommitted") for f in learner_kills), (learner_kills, output)
    # the streams were trimmed as in any run: the audit kept the ledger whole, memory flat
    assert summary["unforced_restarts"] == {}, output
    assert summary["memory"]["plateaued"], (summary["memory"], output)
    assert all(code == 0 for code in summary["exit_codes"].values()), output
    assert proc.returncode == 0, output
