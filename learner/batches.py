"""From Sample messages to padded training tensors: batch choice, advantages, micro-batches.

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


def choose_batch(kinds: Sequence[str], batch_size: int, reset_fraction: float) -> list[int]:
    """Indices (oldest first) of up to `batch_size` entries of a pool whose kinds are `kinds`,
    with round(reset_fraction * batch_size) `reset` entries when the pool has them; the
    other kind fills any shortfall, so a pool without resets still trains (plain PPO)."""
    resets = [i for i, k in enumerate(kinds) if k == "reset"]
    fresh = [i for i, k in enumerate(kinds) if k != "reset"]
    want_reset = round(reset_fraction * batch_size)
    n_reset = min(len(resets), want_reset)
    n_fresh = min(len(fresh), batch_size - n_reset)
    n_reset = min(len(resets), batch_size - n_fresh)  # top up with resets if fresh ran short
    return sorted(resets[:n_reset] + fresh[:n_fresh])


def group_row_advantages(rewards: Sequence[float], prompt_ids: Sequence[str]) -> np.ndarray:
    """[N] reward minus the mean reward of the rows with the same prompt id (float64 sums)."""
    r = np.asarray(rewards, dtype=np.float64)
    keys = {p: i for i, p in enumerate(dict.fromkeys(prompt_ids))}
    inv = np.array([keys[p] for p in prompt_ids], dtype=np.int64)
    mean = np.bincount(inv, weights=r) / np.bincount(inv)
    return (r - mean[inv]).astype(np.float32)


def token_advantages(samples: Sequence[Sample], mode: str) -> list[np.ndarray]:
    """Per-sample token-aligned advantages (0 off the loss mask) for the critic-free modes.

    `mc`: the Sample's own advantages (the estimator's step advantages, or reward - V(s_m)
    for reset rollouts). `group`: each row's group advantage on its trained tokens. `gae`:
    zeros (the learner fills them from the value head)."""
    if mode == "mc":
        return [np.where(s.loss_mask == 1, s.advantages, 0.0).astype(np.float32) for s in samples]
    if mode == "group":
        rows = group_row_advantages([s.reward for s in samples], [s.prompt_id for s in samples])
        return [(s.loss_mask == 1) * np.float32(a) for s, a in zip(samples, rows, strict=True)]
    if mode == "gae":
        return [np.zeros(len(s.token_ids), dtype=np.float32) for s in samples]
    raise ValueError(f"unknown advantage mode {mode!r}")


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
