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


def test_the_report_gives_each_process_its_token_rate_and_each_score_its_error(tmp_path):
    (tmp_path / "learner").mkdir()
    records = [
        {"event": "eval", "t": 1.0, "step": 0, "pass_at_1": 0.2, "n": 100},
        {"event": "update", "t": 5.0, "step": 1},
        {"event": "eval", "t": 9.0, "step": 1, "pass_at_1": 0.5, "n": 400},
    ]
    (tmp_path / "learner" / "run_log.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records)
    )
    progress = [
        {"t": 10.0, "processes": {"actor-0": {"gpo_actor_generated_tokens_total": 100.0}}},
        {
            "t": 20.0,
            "processes": {
                "actor-0": {"gpo_actor_generated_tokens_total": 600.0},
                "estimator-0": {"gpo_estimator_generated_tokens_total": 50.0},
                "learner": {"gpo_learner_tokens_trained_total": 0.0},
            },
        },
        {
            "t": 30.0,
            "processes": {
                "actor-0": {"gpo_actor_generated_tokens_total": 1100.0},
                "estimator-0": {"gpo_estimator_generated_tokens_total": 250.0},
                "learner": {"gpo_learner_tokens_trained_total": 30.0},
                "actor-1": None,  # not answering
            },
        },
    ]
    (tmp_path / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in progress))
    page = write_report(tmp_path).read_text()
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["tokens_per_s:actor-0"] == 50.0  # (1100 - 100) / (30 - 10)
    assert s["tokens_per_s:estimator-0"] == 20.0 and s["tokens_per_s:learner"] == 3.0
    assert "tokens_per_s:actor-1" not in s
    assert s["pass_at_1_first_se"] == 0.04  # sqrt(0.2 * 0.8 / 100)
    assert s["pass_at_1_last_se"] == 0.025  # sqrt(0.5 * 0.5 / 400)
    assert "<th>tokens/s, actor-0 (generated)</th><td>50.000</td>" in page
    assert "<th>held-out pass@1, last evaluation: standard error</th><td>0.025</td>" in page
