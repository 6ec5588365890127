"""The learner's run log mirrored into TensorBoard event files (`learner.tensorboard_dir`)."""

from __future__ import annotations

import sys

import pytest

from learner.telemetry import RunLog
from protocol.process import UserError


def test_update_and_eval_numbers_become_scalars_against_the_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLog(tmp_path / "run_log.jsonl", tmp_path / "tb")
    log.write("update", step=1, version=1, loss=0.5, reward_mean=0.25, samples=64)
    log.write("update", step=2, version=2, loss=0.25, reward_mean=0.5, samples=64)
    log.write("eval", step=2, pass_at_1=0.3, seconds=1.5)
    log.write("resume", step=2, version=2)  # not a scalar event
    log.write("update", step=3, version=3, loss=0.125, reward_mean=0.75, samples=64, ok=True)
    board = EventAccumulator(str(tmp_path / "tb"))
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert {"update/loss", "update/reward_mean", "update/samples", "eval/pass_at_1"} <= tags
    assert not any(t.startswith("resume/") for t in tags) and "update/ok" not in tags
    loss = [(e.step, e.value) for e in board.Scalars("update/loss")]
    assert loss == [(1, 0.5), (2, 0.25), (3, 0.125)]
    assert [(e.step, round(e.value, 6)) for e in board.Scalars("eval/pass_at_1")] == [(2, 0.3)]
    assert len((tmp_path / "run_log.jsonl").read_text().splitlines()) == 5  # the log is whole


def test_without_the_package_the_user_is_told_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(UserError, match=r"pip install 'gpo\[tensorboard\]'"):
        RunLog(tmp_path / "run_log.jsonl", tmp_path / "tb")
    RunLog(tmp_path / "run_log.jsonl")  # not asked for: not needed
