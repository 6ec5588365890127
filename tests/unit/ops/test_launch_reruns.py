"""Reruns are explicit: a run id with earlier state is resumed only with --resume, moved
aside with --fresh, and otherwise refused with one line that names both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ops.launch import main
from ops.run_setup import prepare_run_dir, prior_state
from protocol.config import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def earlier_run(run_dir: Path, step: int = 10, version: int = 51) -> None:
    ckpt = run_dir / "learner" / f"step-{step:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": step, "version": version}))
    (run_dir / "learner" / "latest").write_text(ckpt.name)


def test_a_new_run_id_just_starts(tmp_path):
    assert prior_state(tmp_path / "demo") is None
    assert "a new run" in prepare_run_dir(tmp_path / "demo", resume=False, fresh=False)
    with pytest.raises(ConfigError, match="no earlier state"):
        prepare_run_dir(tmp_path / "demo", resume=True, fresh=False)


def test_earlier_state_is_refused_resumed_or_moved_aside(tmp_path):
    run = tmp_path / "demo"
    earlier_run(run)
    assert prior_state(run) == "a checkpoint at step 10, adapter version 51"
    with pytest.raises(ConfigError) as e:
        prepare_run_dir(run, resume=False, fresh=False)
    assert "--resume" in str(e.value) and "--fresh" in str(e.value)
    assert "resuming from a checkpoint at step 10, adapter version 51" in prepare_run_dir(
        run, resume=True, fresh=False
    )
    said = prepare_run_dir(run, resume=False, fresh=True)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("demo.")]
    assert len(moved) == 1 and str(moved[0]) in said and not run.exists()
    assert (moved[0] / "learner" / "latest").is_file()  # archived, not deleted
    # a Redis AOF alone is state too
    (run / "redis").mkdir(parents=True)
    (run / "redis" / "appendonly.aof").write_text("x")
    assert "AOF" in prior_state(run)


def test_launch_refuses_a_rerun_before_starting_anything(tmp_path, capsys):
    earlier_run(tmp_path / "demo")
    code = main(
        [
            "--config",
            str(ROOT / "ops" / "configs" / "demo.toml"),
            "--set",
            f'launch.runs_dir="{tmp_path}"',
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("gpo launch: error: run demo already has a checkpoint at step 10")
    assert not (tmp_path / "demo" / "redis").exists()  # no redis-server was started
