"""Learner checkpoints: safetensors for tensors, JSON for the rest; never pickle.

Layout under `checkpoint_dir`:

    step-000012/adapter.safetensors     LoRA weights, peft key names (what gets published)
    step-000012/value_head.safetensors  value head (`gae` mode only)
    step-000012/optimizer.safetensors   AdamW moments, keys `<param index>.<state name>`
    step-000012/state.json              step, version, trained ids, feeder cursor, optimizer
                                        param groups
    latest                              the name of the newest complete checkpoint
    lineage.json                        the step each adapter version holds (`lineage.py`),
                                        written at each restart before it publishes

A checkpoint is written into `step-<n>.tmp/`, its files and the directory fsynced, renamed
into place (and the parent fsynced), then `latest` is replaced the same way (write, fsync,
rename, fsync): a kill or a power loss at any moment leaves either the old or the new
checkpoint as `latest`, never a half-written one, and `save_checkpoint` returns only once
the new one is on disk. It is the learner's commit point: what it holds is what the policy
has trained on (see `loop.py` for the ordering with acks). If the checkpoint `latest` names
cannot be read (a disk that lied, a file damaged since), `load_latest` falls back to the
newest older one that can, with a warning: the updates after it are lost, not repeated.
Old checkpoints are pruned by step number.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from learner.lineage import Lineage

LATEST = "latest"
LINEAGE = "lineage.json"
INFLIGHT = "inflight.json"
"""The batch in training and the suspects of a bisection (`learner/bisect.py`)."""
_STEP_DIR = re.compile(r"step-(\d+)")

log = logging.getLogger(__name__)


@dataclass
class LearnerState:
    """Everything besides tensors that a resumed learner needs."""

    step: int = 0
    """Updates done."""
    version: int = 0
    """Adapter version of the policy after `step` updates (0 = base model)."""
    trained_ids: dict[str, int] = field(default_factory=dict)
    """The sample ids trained on up to `step` that can still arrive unstale, each with its
    sample's policy version (`learner.dedup`: older ones are pruned)."""
    feeder_epoch: int = 0
    """Feeder cursor: pass over the training split..."""
    feeder_index: int = 0
    """...and position inside it of the next prompt to send."""


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    state: LearnerState
    adapter: dict[str, Tensor]
    value_head: dict[str, Tensor] | None
    optimizer: dict
    """`torch.optim.Optimizer.state_dict()` form, ready for `load_state_dict`."""
    path: Path


def save_checkpoint(
    root: str | Path,
    state: LearnerState,
    adapter: dict[str, Tensor],
    value_head: dict[str, Tensor] | None,
    optimizer: dict,
    keep: int = 2,
) -> Path:
    """Write a checkpoint of `state` atomically; delete all but the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:06d}"
    tmp = root / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_cpu(adapter), tmp / "adapter.safetensors")
    if value_head is not None:
        save_file(_cpu(value_head), tmp / "value_head.safetensors")
    tensors, groups = _flatten_optimizer(optimizer)
    save_file(tensors, tmp / "optimizer.safetensors")
    meta = {
        "step": state.step,
        "version": state.version,
        "trained_ids": dict(sorted(state.trained_ids.items())),
        "feeder_epoch": state.feeder_epoch,
        "feeder_index": state.feeder_index,
        "optimizer_param_groups": groups,
    }
    (tmp / "state.json").write_text(json.dumps(meta))
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync(root)
    _write_atomic(root / LATEST, name)
    _prune(root, keep)
    return final


def load_latest(root: str | Path) -> Checkpoint | None:
    """The checkpoint named by `latest` or, if it cannot be read, the newest older one that
    can (with a warning); None when there is none. Raises when none of them can be read."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    named = pointer.read_text().strip()
    candidates = [named] + [p.name for p in _steps(root)[::-1] if p.name != named]
    errors = []
    for name in candidates:
        try:
            checkpoint = _load(root / name)
        except Exception as e:  # noqa: BLE001 - missing, torn or damaged files of any kind
            errors.append(f"{name}: {e}")
            continue
        if name != named:
            log.warning(
                "checkpoint %s cannot be read (%s); resuming from %s instead: the updates "
                "after it are lost",
                named,
                errors[0],
                name,
            )
        return checkpoint
    raise RuntimeError(f"no readable checkpoint in {root}: {'; '.join(errors)}")


def _trained_ids(saved: dict | list, version: int) -> dict[str, int]:
    """{id: policy version}; a checkpoint from before versions were kept holds a plain list,
    whose ids count as of the checkpoint's own version (kept until they age out)."""
    if isinstance(saved, list):
        return dict.fromkeys(saved, version)
    return {i: int(v) for i, v in saved.items()}


def _load(path: Path) -> Checkpoint:
    meta = json.loads((path / "state.json").read_text())
    state = LearnerState(
        step=int(meta["step"]),
        version=int(meta["version"]),
        trained_ids=_trained_ids(meta["trained_ids"], int(meta["version"])),
        feeder_epoch=int(meta["feeder_epoch"]),
        feeder_index=int(meta["feeder_index"]),
    )
    head_file = path / "value_head.safetensors"
    head = load_file(head_file) if head_file.is_file() else None
    optimizer = _unflatten_optimizer(
        load_file(path / "optimizer.safetensors"), meta["optimizer_param_groups"]
    )
    return Checkpoint(state, load_file(path / "adapter.safetensors"), head, optimizer, path)


def _flatten_optimizer(sd: dict) -> tuple[dict[str, Tensor], list[dict]]:
    tensors = {}
    for idx, slots in sd["state"].items():
        for key, value in slots.items():
            t = value if isinstance(value, Tensor) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = t.detach().to("cpu").contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, groups


def _unflatten_optimizer(tensors: dict[str, Tensor], groups: list[dict]) -> dict:
    state: dict[int, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = t
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def _cpu(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def load_lineage(root: str | Path) -> Lineage:
    """The lineage of the run's adapter versions; one branch from version 0 when none was
    written (no restart yet) or it cannot be read (with a warning: lags are then counted in
    versions, as if no update had been rolled back)."""
    path = Path(root) / LINEAGE
    if not path.is_file():
        return Lineage()
    try:
        return Lineage.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        log.warning("%s cannot be read (%s): counting policy lag in versions", path, e)
        return Lineage()


def save_lineage(root: str | Path, lineage: Lineage) -> None:
    """Write the lineage atomically and durably (before the version it adds is published)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(root / LINEAGE, json.dumps(lineage.to_json()))


def save_inflight(root: str | Path, marker: dict) -> None:
    """Write the in-flight marker atomically and durably (before the update it names)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _write_atomic(root / INFLIGHT, json.dumps(marker))


def load_inflight(root: str | Path) -> dict | None:
    """The in-flight marker, or None when there is none or it cannot be read (a kill while
    it was being written leaves the previous one, never a torn file)."""
    path = Path(root) / INFLIGHT
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except ValueError as e:
        log.warning("%s cannot be read (%s): no batch is suspected", path, e)
        return None
    return marker if isinstance(marker, dict) else None


def clear_inflight(root: str | Path) -> None:
    """Remove the marker: no batch in training and nothing suspected. Not fsynced: a power
    loss that brings it back costs one harmless bisection, never a sample."""
    with contextlib.suppress(FileNotFoundError):
        (Path(root) / INFLIGHT).unlink()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's contents (a rename is durable once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _steps(root: Path) -> list[Path]:
    """The complete checkpoints under `root`, oldest first by step number."""
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def _prune(root: Path, keep: int) -> None:
    for old in _steps(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
