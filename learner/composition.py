"""Batch composition: which buffered samples make the next update (GPO.md step 6).

A pure function over the kinds of the buffered samples (oldest first), so every mix of
arrivals can be tested by hand. Two modes (`LearnerConfig.batch_mode`):

- `share`: `batch_size` samples, exactly round(reset_fraction * batch_size) of them resets;
- `fresh`: `batch_size` fresh samples, with reset samples added on top up to the share
  `reset_fraction` of the whole batch (at most floor(batch_size * f / (1 - f)) resets; the
  paper adds reset rollouts to the buffer beside the ordinary ones).

The learner reads ahead on the samples stream until the composition can be built. It stops
waiting for a kind when the buffer is at its bound (`full`: `read_ahead`, or the backlog at
which producers wait) or it has held a batch's worth for `compose_patience` seconds
(`drained`: the missing kind is not coming soon):
- resets in surplus while fresh samples are still to come: the oldest surplus resets are
  dropped (`evict`), so resets cannot crowd the fresh samples out of a bounded buffer;
- otherwise, with a batch's worth of samples, the kind that is there fills the batch (as
  a plain PPO run without resets does) and `shortfall` names the kind that ran short.
Entries are taken oldest first within each kind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

BatchMode = Literal["share", "fresh"]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What to do with the buffer now. Nothing to take and nothing to evict: read more."""

    take: list[int] = field(default_factory=list)
    """Indices of the samples to train on now, ascending."""
    evict: list[int] = field(default_factory=list)
    """Indices of surplus reset samples to drop (the buffer is full, fresh ones are short)."""
    shortfall: Literal["fresh", "reset"] | None = None
    """The kind that fell short of its target in `take` (the other kind filled in)."""


def batch_targets(mode: BatchMode, batch_size: int, reset_fraction: float) -> tuple[int, int]:
    """(fresh, reset) samples a full batch holds."""
    if mode == "share":
        resets = round(reset_fraction * batch_size)
        return batch_size - resets, resets
    if mode == "fresh":
        if reset_fraction >= 1.0:
            raise ValueError("batch_mode 'fresh' needs reset_fraction < 1")
        # the small epsilon keeps 0.5 / 0.5 * 64 = 64 from flooring to 63 in floating point
        return batch_size, math.floor(batch_size * reset_fraction / (1.0 - reset_fraction) + 1e-9)
    raise ValueError(f"unknown batch_mode {mode!r}")


def plan_batch(
    kinds: Sequence[str],
    mode: BatchMode,
    batch_size: int,
    reset_fraction: float,
    *,
    full: bool,
    drained: bool,
) -> BatchPlan:
    """The next step for a buffer whose samples have `kinds` (oldest first).

    `full`: the buffer is at its bound; `drained`: the missing kind has been waited for long
    enough. See the module doc for the rules."""
    fresh = [i for i, k in enumerate(kinds) if k != "reset"]
    resets = [i for i, k in enumerate(kinds) if k == "reset"]
    want_f, want_r = batch_targets(mode, batch_size, reset_fraction)
    if len(fresh) >= want_f and len(resets) >= want_r:
        return BatchPlan(sorted(fresh[:want_f] + resets[:want_r]))
    stop_waiting = full or drained
    if not stop_waiting:
        return BatchPlan()
    if mode == "fresh" and len(fresh) >= want_f:  # resets come "up to" the share
        return BatchPlan(sorted(fresh[:want_f] + resets), shortfall="reset")
    if full and len(fresh) < want_f:
        return BatchPlan(evict=resets[: len(resets) - want_r])
    if len(kinds) < batch_size:
        return BatchPlan()
    if len(fresh) < want_f:  # the other kind fills in for the missing fresh samples
        n_f = len(fresh)
        n_r = min(len(resets), want_r + want_f - n_f if mode == "fresh" else batch_size - n_f)
        return BatchPlan(sorted(fresh + resets[:n_r]), shortfall="fresh")
    n_r = len(resets)  # share mode, resets short: fresh samples fill the batch
    return BatchPlan(sorted(fresh[: batch_size - n_r] + resets), shortfall="reset")
