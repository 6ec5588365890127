"""Per-token advantages for the critic-free modes, and batch whitening.

Modes (GPO.md, "Advantages for the PPO loss"):
- "mc" (VinePPO-style): tokens of step i of a fresh trajectory get the estimator's
  A_i = V(s_{i+1}) - V(s_i) (`step_token_advantages`); tokens of a reset rollout get
  reward - V(s_m) (`reset_token_advantages`). Whitened per batch (`whiten`).
- "group" (GRPO/RLOO-style): reward minus the mean reward of the same prompt's group,
  optionally divided by the group's std (`group_advantages`), broadcast to completion tokens
  (`broadcast_to_tokens`).
The "gae" mode lives in `gae.py`.

Step spans are half-open token ranges [start, end) into the *completion* tokens (not the
prefix), sorted and non-overlapping, as the Trajectory message carries them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from learner.masks import masked_mean, masked_var


def step_token_advantages(
    step_advantages: Tensor, step_spans: Sequence[tuple[int, int]] | Tensor, num_tokens: int
) -> Tensor:
    """Spread per-step advantages over the tokens of each step.

    Args:
        step_advantages: [S] A_i for steps i = 0..S-1.
        step_spans: [S, 2] (start, end) per step, half-open, in completion-token indices;
            sorted, non-overlapping, inside [0, num_tokens].
        num_tokens: C, the completion length.

    Returns:
        [C] float32: token j gets A_i if start_i <= j < end_i, else 0 (tokens outside every
        span, e.g. a trailing EOS the segmenter left out, carry no advantage).
    """
    spans = torch.as_tensor(step_spans, dtype=torch.long).reshape(-1, 2)
    adv = torch.as_tensor(step_advantages, dtype=torch.float32).reshape(-1)
    if spans.shape[0] != adv.shape[0]:
        raise ValueError(f"{adv.shape[0]} step advantages for {spans.shape[0]} spans")
    starts, ends = spans[:, 0], spans[:, 1].contiguous()
    if bool((starts < 0).any()) or bool((ends > num_tokens).any()) or bool((ends < starts).any()):
        raise ValueError(f"step spans must satisfy 0 <= start <= end <= {num_tokens}")
    if bool((starts[1:] < ends[:-1]).any()):
        raise ValueError("step spans must be sorted and non-overlapping")
    if len(ends) == 0:
        return torch.zeros(num_tokens)
    pos = torch.arange(num_tokens)
    idx = torch.searchsorted(ends, pos, right=True)  # first step whose end > pos
    covered = idx < len(ends)
    idx = idx.clamp(max=len(ends) - 1)
    covered &= starts[idx] <= pos
    return torch.where(covered, adv[idx], 0.0)


def reset_token_advantages(reward: float, value_at_reset: float, num_tokens: int) -> Tensor:
    """[C] float32 filled with reward - V(s_m): every token of a reset rollout shares the
    outcome advantage against the value of the state it restarted from."""
    return torch.full((num_tokens,), float(reward) - float(value_at_reset))


def group_advantages(
    rewards: Tensor, group_ids: Tensor, scale_by_std: bool = False, eps: float = 1e-6
) -> Tensor:
    """Reward minus the mean reward of the same group (prompt), optionally / (std + eps).

    Args:
        rewards: [N] outcome rewards (integer rewards are taken as float32).
        group_ids: [N] int, equal for samples of the same prompt (any values).
        scale_by_std: divide by the group's unbiased std (GRPO).
        eps: added to the std.

    Returns:
        [N], the dtype of `rewards`. A group of one, or one whose rewards are all equal, gets
        advantage exactly 0 (never 0/0).
    """
    if not rewards.is_floating_point():
        rewards = rewards.float()
    _, inv = torch.unique(group_ids, return_inverse=True)
    g = int(inv.max()) + 1 if inv.numel() else 0
    zeros = torch.zeros(g, dtype=rewards.dtype, device=rewards.device)
    count = zeros.index_add(0, inv, torch.ones_like(rewards))
    mean = zeros.index_add(0, inv, rewards) / count
    hi = zeros.scatter_reduce(0, inv, rewards, "amax", include_self=False)
    lo = zeros.scatter_reduce(0, inv, rewards, "amin", include_self=False)
    # Equal rewards: mean can differ from them by an ulp; force exact zeros there.
    centred = torch.where(hi[inv] == lo[inv], 0.0, rewards - mean[inv])
    if not scale_by_std:
        return centred
    std = (zeros.index_add(0, inv, centred**2) / (count - 1).clamp(min=1)).sqrt()
    return torch.where(centred == 0, 0.0, centred / (std[inv] + eps))


def broadcast_to_tokens(row_advantages: Tensor, mask: Tensor) -> Tensor:
    """Give every completion token of a row that row's scalar advantage.

    Args:
        row_advantages: [B], e.g. `group_advantages(...)`, or reward - V(s_m) for reset
            rollouts in a batch.
        mask: [B, T] bool, True on completion tokens.

    Returns:
        [B, T] float32, 0 where mask is False.
    """
    return torch.where(mask, row_advantages.float().unsqueeze(1), 0.0)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `x` to unit variance over the True entries of `mask` (one batch-wide mean
    and std, unbiased).

    Args:
        x: [B, T] advantages; mask: [B, T] bool.
        shift_mean: subtract the mean (True) or keep it, scaling only (False).
        eps: added to the variance.

    Returns:
        [B, T], 0 where mask is False; all zeros if nothing is selected.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    # var = 0 (one token, or all equal) with eps = 0: scale by 1 rather than 0 * inf.
    scale = torch.where(var + eps > 0, torch.rsqrt(var + eps), torch.ones_like(var))
    out = (x - mean) * scale
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros((), dtype=out.dtype, device=out.device))
