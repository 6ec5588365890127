"""The run report and the progress line read as a person would write them: labels with
units, "–" where there is no value yet, and what the run was (config, overrides, versions)."""

from __future__ import annotations

import json

from ops.launch import LaunchConfig
from ops.launch_progress import progress_line
from ops.report import write_report


def test_the_report_labels_its_figures_and_says_what_the_run_was(tmp_path):
    (tmp_path / "learner").mkdir()
    records = [
        {"event": "update", "t": 5.0, "step": 1, "reward": 0.5},
        {"event": "update", "t": 9.0, "step": 2, "reward": 0.6},
    ]
    (tmp_path / "learner" / "run_log.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records)
    )
    (tmp_path / "launch.json").write_text(
        json.dumps(
            {
                "run_id": "demo",
                "config": "/x/demo.toml",
                "model": "/models/tiny",
                "workers": {"learner": {}, "actor-0": {}},
                "sets": ["learner.lr=0.001"],
                "software": {"python": "3.11.7", "torch": "2.13.0", "commit": "abc1234"},
            }
        )
    )
    page = write_report(tmp_path).read_text()
    assert "pass_at_1_first" not in page  # keys stay in summary.json, labels on the page
    assert "<th>held-out pass@1, first evaluation</th><td>–</td>" in page  # none yet
    assert "<th>wall time (minutes)</th><td>0.0</td>" in page  # minutes to one place
    assert "<th>updates</th><td>2</td>" in page
    assert "<th>overrides (--set)</th><td>learner.lr=0.001</td>" in page
    assert "<th>version: torch</th><td>2.13.0</td>" in page
    assert "<th>version: commit</th><td>abc1234</td>" in page
    assert json.loads((tmp_path / "summary.json").read_text())["pass_at_1_first"] is None


def test_progress_shows_a_dash_until_there_is_a_value():
    rec = {
        "t": 30.0,
        "backlog": {"samples": 3},
        "processes": {
            # gauges read 0 before their first value
            "learner": {
                "gpo_learner_updates_total": 0,
                "gpo_learner_reward_mean": 0.0,
                "gpo_learner_heldout_pass_at_1_ratio": 0.0,
                "gpo_learner_heldout_evaluations_total": 0,
            },
        },
    }
    line = progress_line(rec, LaunchConfig())
    assert "reward – | held-out pass@1 –" in line, line
    rec["processes"]["learner"].update(
        {
            "gpo_learner_updates_total": 3,
            "gpo_learner_reward_mean": 0.25,
            "gpo_learner_heldout_evaluations_total": 1,
            "gpo_learner_heldout_pass_at_1_ratio": 0.3,
        }
    )
    line = progress_line(rec, LaunchConfig())
    assert "reward 0.250 | held-out pass@1 0.300" in line, line
