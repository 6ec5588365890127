"""The ablation's read-out: windows, spread, training time, and the report built from logs."""

import hashlib
import json
import math
import subprocess

import pytest

from ops.experiments import ablation as ab
from ops.experiments import ablation_plots as plots
from ops.experiments import ablation_report as rep
from ops.experiments import ablation_studies as studies


def write_log(run_dir, evals, updates):
    path = run_dir / "learner" / "run_log.jsonl"
    path.parent.mkdir(parents=True)
    lines = [{"event": "eval", **e} for e in evals]
    lines += [{"event": "update", **u} for u in updates]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def linear_curve(gain: float, resets: int) -> rep.Curve:
    """Evaluations every 20 updates and 30 s from 0.3, rising by `gain` over 60 updates."""
    steps = [0, 20, 40, 60]
    return rep.Curve(
        steps=steps,
        seconds=[0.0, 30.0, 60.0, 90.0],
        pass_at_1=[0.3 + gain * s / 60 for s in steps],
        duration=90.0,
        updates=60,
        resets=resets,
        samples=100,
    )


def test_window_mean_takes_the_last_third_or_the_last_value_before():
    xs, ys = [0, 20, 40, 60, 80], [0.3, 0.32, 0.34, 0.4, 0.5]
    assert rep.window_mean(xs, ys, 60) == pytest.approx(0.4)  # (40, 60]
    assert rep.window_mean(xs, ys, 80) == pytest.approx(0.45)  # (53.3, 80]: 60 and 80
    assert rep.window_mean(xs, ys, 10) == pytest.approx(0.3)  # nothing in (6.7, 10]: last <= 10
    assert math.isnan(rep.window_mean([5], [0.1], 1))


def test_spread_is_mean_sample_std_min_max():
    m, s, lo, hi = rep.spread([0.2, 0.4, 0.6])
    assert (m, lo, hi) == pytest.approx((0.4, 0.2, 0.6))
    assert s == pytest.approx(0.2)  # sample std
    assert rep.spread([0.5])[1] == 0.0


def test_read_curve_subtracts_evaluation_time(tmp_path):
    evals = [
        {"t": 10.0, "step": 0, "pass_at_1": 0.3, "seconds": 4.0},
        {"t": 30.0, "step": 20, "pass_at_1": 0.35, "seconds": 4.0},
        {"t": 50.0, "step": 40, "pass_at_1": 0.4, "seconds": 6.0},
    ]
    updates = [{"t": 20.0 + i, "step": i, "samples": 64, "resets": 32} for i in range(1, 41)]
    write_log(tmp_path, evals, updates)
    c = rep.read_curve(tmp_path)
    # training time: t less evaluation time so far, from the first evaluation's end
    assert c.seconds == pytest.approx([0.0, 16.0, 30.0])
    assert c.duration == pytest.approx(60.0 - 14.0 - 6.0)  # last update at t = 60
    assert c.steps == [0, 20, 40] and c.updates == 40
    assert c.samples == 64 * 40 and c.resets == 32 * 40


def test_study_report_compares_arms_at_the_common_window(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "PLOTS", tmp_path / "plots")
    monkeypatch.setattr(rep, "machine_line", lambda: "test machine")
    curves = {}
    for arm, gain in (("gpo", 0.1), ("none", 0.0), ("random", 0.05)):
        for seed in (0, 1):
            curves[(arm, seed)] = linear_curve(gain, resets=10)
    text = rep.study_report("selection", studies.STUDIES["selection"], curves, [0, 1], 3.0)
    # equal time: window (60, 90] s holds only the evaluation at 90 s (step 60) -> 0.3 + gain
    assert "| GPO (mc) | 2 | 0.300 | 0.400 ± 0.000" in text
    assert "| PPO (mc: no resets) | 2 | 0.300 | 0.300 ± 0.000" in text
    # the one-thing pairs name what they isolate; the first arm is compared to every arm
    assert (
        "| GPO (mc) − PPO (mc: no resets) | resets, estimator mc | equal time | 0.100 ± 0.000"
        in text
    )
    assert "| GPO (mc) − random reset (mc) |  | equal updates (U = 60) | 0.050 ± 0.000" in text
    assert "Against plain PPO" not in text  # no plain PPO runs in this study's curves
    assert (tmp_path / "plots" / "ablation-selection.png").is_file()


def test_the_map_report_pairs_arms_within_each_cell_and_plots_the_cells_it_has(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(plots, "PLOTS", tmp_path / "plots")
    monkeypatch.setattr(rep, "machine_line", lambda: "test machine")
    curves = {
        (f"{arm}@{cell}", seed): linear_curve(gain, resets=0)
        for cell, arm, gain in (
            ("L8-d1", "ppo", 0.0),
            ("L8-d1", "gpo-group", 0.1),
            ("L16-d2", "ppo", 0.0),
            ("L16-d2", "gpo-group", -0.05),
        )
        for seed in (0, 1)
    }
    text = rep.study_report("pivot-map", studies.STUDIES["pivot-map"], curves, [0, 1], 15.0)
    # within a cell, the window (60, 90] s holds only the evaluation at 90 s (step 60)
    pair = "GPO (group) − plain PPO (group, no MC) | resets, estimator group"
    assert f"| L8-d1 | 2 | {pair} | equal time | 0.100 ± 0.000 | [+0.100, +0.100] |" in text
    assert f"| L16-d2 | 2 | {pair} | equal updates (U = 60) | -0.050 ± 0.000 |" in text
    assert "| L8-d2 |" not in text and "| L16-d1 |" not in text  # cells without runs
    assert "![pivot-map](results/ablation-pivot-map.png)" in text
    assert (tmp_path / "plots" / "ablation-pivot-map.png").is_file()


def test_arms_differ_from_their_pair_in_the_fields_named():
    """The one-thing pairs: GPO and PPO with the same estimator differ in the resets only
    (selection, the MC search PPO does not need, and the reset share of the batch)."""
    resets_only = {"estimator.mc.selection", "estimator.mc_values", "learner.reset_fraction"}
    for a, b in (("gpo", "none"), ("gpo-group", "ppo"), ("gpo-gae", "ppo-gae")):
        x, y = studies.ARMS[a], studies.ARMS[b]
        differ = {k for k in set(x) | set(y) if x.get(k) != y.get(k)}
        assert differ <= resets_only, (a, b, differ)
    assert studies.ARMS["gpo-fresh"] == {"learner.batch_mode": '"fresh"'}
    assert studies.ARMS["gpo-value"] == {"learner.reset_baseline": '"value"'}


def test_summaries_resume_only_runs_with_the_same_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(ab, "SUMMARIES", tmp_path)
    curve = rep.Curve([0, 10], [0.0, 5.0], [0.3, 0.4], 6.0, 12, 100, 400)
    demo = tmp_path / "demo.toml"
    demo.write_text((ab.ROOT / "ops" / "configs" / "demo.toml").read_text())
    settings = ab.run_settings("gpo", 1, 3.0, 10, demo)
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "gpo-s1.json").write_text(
        json.dumps({"settings": settings, "curve": curve.to_json()})
    )
    assert ab.load_summary(demo, "gpo", 1, settings) == curve
    other = ab.run_settings("gpo", 1, 5.0, 10, demo)
    assert ab.load_summary(demo, "gpo", 1, other) is None
    assert ab.load_summary(demo, "gpo", 2) is None
    assert ab.load_summary(tmp_path / "pivot.toml", "gpo", 1) is None  # each config its own
    # the same arm under other search defaults (here: a config that sets them) is another run
    demo.write_text(
        demo.read_text().replace("[estimator.mc]", "[estimator.mc]\nbudget = 'uniform'")
    )
    assert ab.run_settings("gpo", 1, 3.0, 10, demo)["search"]["budget"] == "uniform"
    assert ab.load_summary(demo, "gpo", 1, ab.run_settings("gpo", 1, 3.0, 10, demo)) is None
    # a run without MC search (plain PPO) does not depend on them
    assert "search" not in ab.run_settings("ppo", 1, 3.0, 10, demo)


def test_a_summary_of_other_settings_is_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr(ab, "SUMMARIES", tmp_path)
    demo = tmp_path / "demo.toml"
    demo.write_text((ab.ROOT / "ops" / "configs" / "demo.toml").read_text())
    kept = {"settings": ab.run_settings("gpo", 0, 3.0, 10, demo), "curve": {}}
    path = tmp_path / "demo" / "gpo-s0.json"
    path.parent.mkdir()
    path.write_text(json.dumps(kept))

    def no_launch(*args, **kwargs):
        raise AssertionError("launched over a kept summary")

    monkeypatch.setattr(ab.subprocess, "run", no_launch)
    with pytest.raises(SystemExit, match=r"gpo-s0 with other settings \(minutes: 3.0 -> 4.0\)"):
        ab.launch_one(tmp_path / "runs", demo, "gpo", 0, 4.0, 10)
    assert json.loads(path.read_text()) == kept


def test_tokens_at_matches_evaluations_to_progress_by_update_count():
    progress = [
        {"t": 10, "processes": {"learner": {"gpo_learner_updates_total": 0}}},
        {
            "t": 20,
            "processes": {
                "learner": {"gpo_learner_updates_total": 10.0},
                "actor-0": {"gpo_actor_generated_tokens_total": 1000.0},
                "estimator-0": {"gpo_estimator_generated_tokens_total": 3000.0},
            },
        },
        {
            "t": 30,
            "processes": {
                "learner": {"gpo_learner_updates_total": 30.0},
                "actor-0": {"gpo_actor_generated_tokens_total": 2000.0},
                "estimator-0": {"gpo_estimator_generated_tokens_total": 10000.0},
            },
        },
    ]
    # step 0: nothing generated yet; 10: 4000; 20: halfway from 4000 to 12000
    assert rep.tokens_at(progress, [0, 10, 20, 30]) == [0.0, 4000.0, 8000.0, 12000.0]
    assert rep.tokens_at(progress[:1], [0, 10]) == []


def test_pivot_map_cells_set_the_task_everywhere_and_name_their_runs():
    study = studies.STUDIES["pivot-map"]
    assert study.run_arms()[:2] == ["ppo@L8-d1", "gpo-group@L8-d1"]
    assert len(study.run_arms()) == 2 * 4
    sets = studies.arm_sets("gpo-group@L16-d2")
    assert sets["learner.advantage"] == '"group"'
    # what each role and the base policy's bootstrap read, once [run] is expanded
    from ops.run_setup import bootstrap_fields
    from protocol.config import apply_sets, load_toml
    from protocol.run import expand_run

    pivot = ab.ROOT / "ops" / "configs" / "pivot.toml"
    data = apply_sets(load_toml(pivot), [f"{k}={v}" for k, v in sets.items()])
    options = {"min_steps": 16, "max_steps": 16, "pivot_digits": 2, "pivot_position": "random"}
    roles = expand_run(data)
    for role in ("learner", "actor", "estimator"):
        assert roles[role]["task"] == "pivot" and roles[role]["task_options"] == options, role
    for role in ("actor", "estimator"):
        assert roles[role]["rollout"]["max_new_tokens"] == 12 * 16 + 8
    assert roles["learner"]["eval"]["max_new_tokens"] == 12 * 16 + 8
    boot = bootstrap_fields(data["run"], data.get("launch", {}).get("bootstrap", {}))
    assert boot == {"task": "pivot", **options}


def test_a_pinned_config_runs_on_its_committed_policy_and_summaries_name_it(tmp_path, monkeypatch):
    # pivot.toml's studies outlast a session: their runs name the committed base policy's
    # weights, so a run made on another machine's bootstrap is never mixed in
    monkeypatch.setattr(ab, "SUMMARIES", tmp_path)
    pivot = ab.ROOT / "ops" / "configs" / "pivot.toml"
    sets = ab.run_settings("ppo", 0, 15.0, 10, pivot)["sets"]
    where = ab.pinned_policy(pivot, sets)
    assert where is not None and where.parent == tmp_path / "pivot" / "policies"
    assert ab.run_settings("ppo", 0, 15.0, 10, pivot)["policy"] is None  # not pinned yet
    where.mkdir(parents=True)
    (where / "model.safetensors").write_bytes(b"weights A")
    settings = ab.run_settings("ppo", 0, 15.0, 10, pivot)
    assert settings["policy"] == hashlib.sha256(b"weights A").hexdigest()[:16]
    (tmp_path / "pivot" / "ppo-s0.json").write_text(
        json.dumps(
            {"settings": settings, "curve": rep.Curve([0], [0.0], [0.1], 1.0, 1, 0, 1).to_json()}
        )
    )
    assert ab.load_summary(pivot, "ppo", 0, settings) is not None
    (where / "model.safetensors").write_bytes(b"weights B")  # another machine's bootstrap
    assert ab.load_summary(pivot, "ppo", 0, ab.run_settings("ppo", 0, 15.0, 10, pivot)) is None
    # each pivot-map cell has its own bootstrap, so its own policy; the demo is not pinned
    cell = ab.run_settings("ppo@L16-d2", 0, 15.0, 10, pivot)["sets"]
    assert ab.pinned_policy(pivot, cell) != where
    demo = ab.ROOT / "ops" / "configs" / "demo.toml"
    assert ab.pinned_policy(demo, {}) is None
    assert "policy" not in ab.run_settings("ppo", 0, 3.0, 10, demo)


def test_the_first_run_on_a_newly_built_policy_names_it_in_its_summary(tmp_path, monkeypatch):
    # a pivot-map cell's base policy is built just before the cell's first run: that run's
    # summary must name the weights it ran on, or a resumed study takes it for another's
    from ops.tiny_policy import bootstrap as boot

    monkeypatch.setattr(ab, "SUMMARIES", tmp_path / "summaries")
    built = tmp_path / "built"
    built.mkdir()
    for name in ab.POLICY_FILES:
        (built / name).write_text("{}")
    (built / "model.safetensors").write_bytes(b"weights")
    record = {"config": {}, "pass_at_1": 0.2, "in_band": True, "train_steps": 1, "seconds": 1}
    (built / "bootstrap.json").write_text(json.dumps(record))
    monkeypatch.setattr(boot, "bootstrap", lambda config: built)
    monkeypatch.setattr(ab, "read_curve", lambda run: rep.Curve([0], [0.0], [0.1], 1.0, 1, 0, 1))
    launched = []

    def fake_run(cmd, **kw):
        launched.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(ab.subprocess, "run", fake_run)
    pivot = ab.ROOT / "ops" / "configs" / "pivot.toml"
    ab.launch_one(tmp_path / "runs", pivot, "ppo@L8-d1", 0, 15.0, 10)
    sha = hashlib.sha256(b"weights").hexdigest()[:16]
    saved = json.loads(ab.summary_path(pivot, "ppo@L8-d1", 0).read_text())["settings"]
    assert saved["policy"] == sha
    assert any(a.startswith("run.model=") and "policies" in a for a in launched[0])
    # resumed, the run is found done and not launched again
    ab.launch_one(tmp_path / "runs", pivot, "ppo@L8-d1", 0, 15.0, 10)
    assert len(launched) == 1


def test_a_pinned_policy_built_outside_its_bands_is_announced_as_such():
    cfg = {"easy_step_min": 0.97, "pivot_band_low": 0.15, "pivot_band_high": 0.5}
    acc = {"easy_right": 755, "easy_total": 759, "easy_rate": 755 / 759}
    record = {"config": cfg, "train_steps": 1642, "seconds": 301.8, "pass_at_1": 0.115}
    out = {
        **record,
        "in_band": False,
        "step_accuracy": {**acc, "pivot_right": 26, "pivot_total": 200, "pivot_rate": 0.13},
    }
    line = ab.band_line(out)
    assert line.startswith("WARNING: outside its bands")
    assert "755/759 = 0.995" in line and "26/200 = 0.130 (band 0.15-0.50)" in line
    assert "1642 SFT steps in 302 s" in line
    inside = {**out, "in_band": True, "step_accuracy": {**out["step_accuracy"], "pivot_rate": 0.2}}
    assert not ab.band_line(inside).startswith("WARNING")
    # the arithmetic task's record has one pass@1 band and no per-step accuracy
    assert ab.band_line({**record, "in_band": True}) == "pass@1 0.115, in band: True"


def test_a_run_that_shared_the_machine_is_flagged_by_the_cpu_others_used():
    from ops.experiments.ablation import OTHERS_MAX, cpu_use

    # 100 s on 2 cores: the machine was busy 200 s, the run's processes used 150 of them
    use = cpu_use(100.0, 150.0, busy_after=1200.0, busy_before=1000.0, cores=2)
    assert use == {
        "cores": 2,
        "run_cpu_seconds": 150.0,
        "others_cpu_seconds": 50.0,
        "others_share": 0.25,
    }
    assert use["others_share"] > OTHERS_MAX
    alone = cpu_use(100.0, 150.0, busy_after=1152.0, busy_before=1000.0, cores=2)
    assert alone["others_share"] == 0.01 and alone["others_share"] < OTHERS_MAX
    assert cpu_use(100.0, 150.0, None, 1000.0) is None  # no /proc/stat: not measured


def test_the_async_study_splits_an_update_into_waiting_and_training(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "PLOTS", tmp_path / "plots")
    monkeypatch.setattr(rep, "machine_line", lambda: "test machine")

    def curve(updates: int, update_seconds: float) -> rep.Curve:
        return rep.Curve(
            steps=[0, 5],
            seconds=[0.0, 100.0],
            pass_at_1=[0.3, 0.4],
            duration=100.0,
            updates=updates,
            resets=0,
            samples=64 * updates,
            update_seconds=update_seconds,
        )

    # sync: 10 updates in 100 s, 40 s of them training -> 10 s per update, T = 4, G = 6;
    # pipelined on separate devices: (6 + 4) / max(6, 4) = 1.67. async: 15 updates -> 9.6
    # samples/s against 6.4: measured 1.50
    curves = {("gpo-sync", s): curve(10, 40.0) for s in (0, 1)}
    curves |= {("gpo-async", s): curve(15, 45.0) for s in (0, 1)}
    text = rep.study_report("async", studies.STUDIES["async"], curves, [0, 1], 2.0)
    assert (
        "| max_policy_lag = 0 (actor and learner) | 10.000 ± 0.000 | 4.000 ± 0.000 | "
        "6.000 ± 0.000 | 6.400 ± 0.000 |" in text
    )
    assert "paired by seed): 1.500 ± 0.000" in text
    assert "G/T = 1.50" in text and "a speed-up of 1.67 at this ratio" in text
    assert "saves less than on separate devices" in text  # 1.50 measured <= 1.67 modelled
    # async at 25 updates: 2.50 measured, above the model, and the report says what that means
    curves |= {("gpo-async", s): curve(25, 75.0) for s in (0, 1)}
    text = rep.study_report("async", studies.STUDIES["async"], curves, [0, 1], 2.0)
    assert "paired by seed): 2.500 ± 0.000" in text and "above the model's" in text
    assert rep.pipelined_speedup(1.0, 4.0) == pytest.approx(1.25)
    # a summary written before the field reads as 0 seconds
    old = {k: v for k, v in curve(1, 1.0).to_json().items() if k != "update_seconds"}
    assert rep.Curve.from_json(old).update_seconds == 0.0
