"""Generalised Advantage Estimation over completion tokens (the paper-faithful "gae" mode).

Token t of a completion is an action; its state is everything before it. On target-aligned
tensors (see `masks.py`) index t means "emit input_ids[t+1]", so the value head's output at
hidden position t, `value_head(h)[:, :-1]`, is V(s_t) at the same index.

The outcome reward is the only reward: it sits on the last completion token (a KL penalty,
if any, would be added per token by the caller). The episode ends after the last completion
token, so V(s_{T_end + 1}) = 0 and nothing leaks across rows or from padding:

    delta_t = r_t + gamma * V_{t+1} - V_t
    A_t     = delta_t + gamma * lambda * A_{t+1}
    R_t     = A_t + V_t        (the value target)

Positions where `mask` is False are skipped: they neither receive an advantage (0) nor
break the chain, so (t+1) above means "the next masked-in position". For the usual one
contiguous completion span per row this is the textbook recursion.
"""

from __future__ import annotations

import torch
from torch import Tensor


def terminal_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Put each row's scalar reward on its last True mask position.

    Args:
        rewards: [B] outcome reward per row.
        mask: [B, T] bool.

    Returns:
        [B, T] float, zero everywhere except the last masked-in token of each row; rows with
        no True position stay all zero.
    """
    b, t = mask.shape
    pos = torch.arange(t, device=mask.device).expand(b, t)
    last = torch.where(mask, pos, torch.full_like(pos, -1)).max(dim=1).values  # [B]
    out = torch.zeros(b, t, dtype=torch.float32, device=mask.device)
    has = last >= 0
    rows = torch.arange(b, device=mask.device)[has]
    out[rows, last[has]] = rewards.to(out.dtype)[has]
    return out


@torch.no_grad()
def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Advantages and returns by GAE(gamma, lambda), computed without gradient.

    Args:
        rewards: [B, T] per-token rewards (see `terminal_rewards`).
        values: [B, T] V(s_t) from the value head at the same positions (old values).
        mask: [B, T] bool, True on completion tokens.
        gamma: discount per token (1 for outcome-reward reasoning).
        lam: GAE lambda; 1 gives Monte-Carlo returns minus V, 0 gives the one-step TD error.

    Returns:
        (advantages [B, T], returns [B, T]), both 0 where mask is False.
    """
    rewards = rewards.float()
    values = values.float()
    b, t = rewards.shape
    next_value = torch.zeros(b, dtype=torch.float32, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    adv = torch.zeros_like(rewards)
    for i in range(t - 1, -1, -1):  # a loop over T of [B] ops: T is at most a few thousand
        m = mask[:, i]
        delta = rewards[:, i] + gamma * next_value - values[:, i]
        a = delta + gamma * lam * next_adv
        adv[:, i] = torch.where(m, a, 0.0)
        next_value = torch.where(m, values[:, i], next_value)
        next_adv = torch.where(m, a, next_adv)
    returns = torch.where(mask, adv + values, 0.0)
    return adv, returns
