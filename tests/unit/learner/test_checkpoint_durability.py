"""Checkpoints survive power loss and damage (RELIABILITY): fsync before every rename, a
fallback past an unreadable newest checkpoint, and pruning by step number."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from learner import checkpoint
from learner.checkpoint import LearnerState, load_latest, save_checkpoint


def write(root, step: int, keep: int = 5):
    adapter = {"a.lora_A.weight": torch.full((2, 2), float(step))}
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    state = LearnerState(step=step, version=step, trained_ids={f"s{step}": step})
    return save_checkpoint(root, state, adapter, None, optimizer, keep=keep)


def test_files_and_directories_are_fsynced_before_each_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    write(tmp_path, 3)
    synced = [e[1] for e in events if e[0] == "fsync"]
    tmp = str(tmp_path / "step-000003.tmp")
    renames = [i for i, e in enumerate(events) if e[0] == "replace"]
    first = renames[0]  # the checkpoint directory into place
    before = {e[1] for e in events[:first] if e[0] == "fsync"}
    for name in ("adapter.safetensors", "optimizer.safetensors", "state.json"):
        assert f"{tmp}/{name}" in before
    assert tmp in before  # the directory's entries, before it is renamed
    # the parent after the rename, and `latest` written, synced, renamed, its parent synced
    assert synced.count(str(tmp_path)) >= 2
    assert str(tmp_path / "latest.tmp") in synced
    assert events[renames[1]][2] == str(tmp_path / "latest")


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    write(tmp_path, 1)
    newest = write(tmp_path, 2)
    (newest / "adapter.safetensors").write_bytes(b"torn")  # damaged after the rename
    with caplog.at_level(logging.WARNING):
        ckpt = load_latest(tmp_path)
    assert ckpt.state.step == 1 and ckpt.adapter["a.lora_A.weight"][0, 0] == 1.0
    assert "step-000002 cannot be read" in caplog.text
    (ckpt.path / "state.json").write_text("{")  # and when none can be read: a clear error
    with pytest.raises(RuntimeError, match="no readable checkpoint"):
        load_latest(tmp_path)


def test_pruning_goes_by_step_number_not_by_name(tmp_path):
    write(tmp_path, 999_999)
    write(tmp_path, 1_000_000, keep=1)  # "step-1000000" sorts before "step-999999" as text
    assert [p.name for p in tmp_path.glob("step-*")] == ["step-1000000"]
    assert load_latest(tmp_path).state.step == 1_000_000
