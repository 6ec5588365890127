"""From Sample messages to padded training tensors: advantages, baselines, micro-batches.

All functions are pure. Per-token arrays of a Sample are *token-aligned* (index t is about
token_ids[t]); the tensors handed to the loss are *target-aligned* [B, T-1] (see
`masks.py`): `collate` drops index 0 of every per-token array. Rows are right-padded with
token 0 under attention mask 0; padding and prefix tokens have loss mask False.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from protocol.messages import Sample


def group_row_advantages(rewards: Sequence[float], groups: Sequence[str]) -> np.ndarray:
    """[N] reward minus the mean reward of the rows with the same group key (float64 sums)."""
    r = np.asarray(rewards, dtype=np.float64)
    keys = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    inv = np.array([keys[g] for g in groups], dtype=np.int64)
    mean = np.bincount(inv, weights=r) / np.bincount(inv)
    return (r - mean[inv]).astype(np.float32)


def reset_baselines(
    rewards: Sequence[float],
    groups: Sequence[str],
    values: Sequence[float],
    counts: Sequence[int],
) -> np.ndarray:
    """[N] leave-one-out baseline of each reset rollout (GPO.md step 6).

    Row i's baseline pools the rewards of the other rollouts of its group (one reset state)
    with `counts[i]` MC continuations of mean `values[i]` drawn from that state:

        b_i = (sum_{j in g(i), j != i} R_j + c_i * v_i) / (|g(i)| - 1 + c_i)

    A row with nothing to pool (alone in its group, c_i = 0) gets v_i. Unlike v_i alone (the
    estimate that won the argmax, biased on the trajectory it was chosen from), b_i is
    independent of R_i."""
    r = np.asarray(rewards, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    keys = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    inv = np.array([keys[g] for g in groups], dtype=np.int64)
    others = np.bincount(inv, weights=r)[inv] - r  # rewards of the rest of the group
    denom = np.bincount(inv)[inv] - 1.0 + c
    pooled = np.divide(others + c * v, denom, out=v.copy(), where=denom > 0)
    return pooled.astype(np.float32)


def row_advantages(samples: Sequence[Sample], mode: str, reset_baseline: str) -> np.ndarray:
    """[N] one advantage per row, for the rows whose tokens share one (NaN elsewhere).

    Reset rows, in `mc` and `group` mode: reward minus the reset state's baseline,
    `reset_baselines` (`loo`) or V(s_m) alone (`value`). Fresh rows in `group` mode: reward
    minus the mean reward of the fresh rows of the same group (the prompt). Fresh rows in
    `mc` mode carry per-step advantages instead (NaN here), except those the estimator did
    not search (no step values): they get their group advantage as in `group` mode."""
    out = np.full(len(samples), np.nan, dtype=np.float32)
    resets = [i for i, s in enumerate(samples) if s.kind == "reset"]
    fresh = [i for i, s in enumerate(samples) if s.kind != "reset"]
    if resets:
        rs = [samples[i] for i in resets]
        rewards = np.array([s.reward for s in rs], dtype=np.float32)
        if reset_baseline == "loo":
            base = reset_baselines(
                rewards,
                [group_of(s) for s in rs],
                [s.baseline_value for s in rs],
                [s.baseline_count for s in rs],
            )
        elif reset_baseline == "value":
            base = np.array([s.baseline_value for s in rs], dtype=np.float32)
        else:
            raise ValueError(f"unknown reset baseline {reset_baseline!r}")
        out[resets] = rewards - base
    if fresh:
        fs = [samples[i] for i in fresh]
        group = group_row_advantages([s.reward for s in fs], [group_of(s) for s in fs])
        take = [mode == "group" or len(s.step_values) == 0 for s in fs]
        out[[i for i, t in zip(fresh, take, strict=True) if t]] = group[np.asarray(take, bool)]
    return out


def group_of(sample: Sample) -> str:
    """A sample's baseline group: its `group`, or its prompt id when that is empty."""
    return sample.group or sample.prompt_id


def token_advantages(
    samples: Sequence[Sample], mode: str, reset_baseline: str = "loo"
) -> list[np.ndarray]:
    """Per-sample token-aligned advantages (0 off the loss mask) for the critic-free modes.

    `mc`: fresh rows keep the Sample's own advantages (the estimator's step advantages);
    reset rows get reward minus their state's baseline (`row_advantages`). `group`: each row's
    group advantage on its trained tokens, a group being a prompt's fresh rollouts or one
    reset state's rollouts. `gae`: zeros (the learner fills them from the value head)."""
    if mode == "gae":
        return [np.zeros(len(s.token_ids), dtype=np.float32) for s in samples]
    if mode not in ("mc", "group"):
        raise ValueError(f"unknown advantage mode {mode!r}")
    rows = row_advantages(samples, mode, reset_baseline)
    out = []
    for s, a in zip(samples, rows, strict=True):
        if np.isnan(a):
            out.append(np.where(s.loss_mask == 1, s.advantages, 0.0).astype(np.float32))
        else:
            out.append((s.loss_mask == 1) * np.float32(a))
    return out


def plan_micro_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Split rows into micro-batches of at most `token_budget` padded tokens each.

    Rows are taken longest first (rows of similar length pad little) and packed greedily:
    a micro-batch of k rows costs k * (its longest row). A row longer than the budget goes
    alone. Deterministic: ties keep the input order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= token_budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


@dataclass(frozen=True, slots=True)
class MicroBatch:
    """Padded tensors of some rows of a batch."""

    rows: list[int]
    """Indices of these rows in the batch."""
    input_ids: Tensor
    """[B, T] int64, right-padded with 0."""
    attention_mask: Tensor
    """[B, T] int64, 1 on real tokens."""
    mask: Tensor
    """[B, T-1] bool, target-aligned loss mask (completion tokens only)."""
    behaviour: Tensor
    """[B, T-1] float32, the actors' logprobs, target-aligned."""
    advantages: Tensor
    """[B, T-1] float32, target-aligned (0 off the mask)."""
    rewards: Tensor
    """[B] float32 outcome rewards."""


def collate(
    samples: Sequence[Sample],
    advantages: Sequence[np.ndarray],
    rows: Sequence[int],
    device: torch.device | str = "cpu",
) -> MicroBatch:
    """Pad `rows` of the batch into one MicroBatch on `device`."""
    n, t = len(rows), max(len(samples[i].token_ids) for i in rows)
    ids = np.zeros((n, t), dtype=np.int64)
    attn = np.zeros((n, t), dtype=np.int64)
    mask = np.zeros((n, t), dtype=bool)
    beh = np.zeros((n, t), dtype=np.float32)
    adv = np.zeros((n, t), dtype=np.float32)
    for j, i in enumerate(rows):
        s, k = samples[i], len(samples[i].token_ids)
        ids[j, :k], attn[j, :k] = s.token_ids, 1
        mask[j, :k] = s.loss_mask == 1
        beh[j, :k], adv[j, :k] = s.logprobs, advantages[i]
    rewards = np.array([samples[i].reward for i in rows], dtype=np.float32)

    def put(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).to(device)

    return MicroBatch(
        rows=list(rows),
        input_ids=put(ids),
        attention_mask=put(attn),
        mask=put(mask[:, 1:].copy()),
        behaviour=put(beh[:, 1:].copy()),
        advantages=put(adv[:, 1:].copy()),
        rewards=put(rewards),
    )
