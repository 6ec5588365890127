"""PPO losses: the clipped policy surrogate with truncated importance weights, and the
clipped value loss.

Three policies meet in an asynchronous learner:
- mu, the *behaviour* policy: what an actor sampled with (an older adapter version, another
  engine's numerics, top-p). Its log-probs arrive with each sample.
- pi_old, the *proximal* policy: the learner's weights at the start of this update, with
  log-probs recomputed once, without gradient, before the PPO epochs.
- pi, the current policy, with gradient.

Decoupled PPO (Hilton et al. 2021, "Batch size-invariance for policy optimization") clips
around pi_old, not mu, so the trust region is set by how far this update moved, however
stale the data. The off-policyness between pi_old and mu is corrected by a truncated
importance weight (TIS, as in Yao et al. 2025 for engine/trainer mismatch):

    r_t = pi(a_t) / pi_old(a_t)                              (gradient flows here)
    w_t = min(pi_old(a_t) / mu(a_t), tis_cap)                (constant)
    L   = token-mean over mask of  w_t * max(-r_t A_t, -clip(r_t, 1-eps_low, 1+eps_high) A_t)

With `behaviour_logprobs=None` (or equal to `old_logprobs`) w_t = 1 and this is plain PPO.
Optional dual clip (Ye et al. 2020) bounds the loss of a negative-advantage token at
-dual_clip * A_t however large r_t grows.

The log-ratio log pi - log pi_old is clamped to +-20 before the exp (no gradient beyond it).
Masked-out entries of every input may hold anything (padding, NaN): they are zeroed before
any exp, so neither the loss nor its gradient can pick up NaN from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from learner.masks import masked_mean, token_mean

_LOG_RATIO_LIMIT = 20.0
"""Bound on |log pi - log pi_old| before exponentiating (e^20 ~ 5e8)."""


@dataclass(frozen=True, slots=True)
class PolicyLossStats:
    """Detached scalar tensors (kept on device so that logging is one sync per step)."""

    clip_fraction: Tensor
    """Fraction of masked tokens whose clipped term is the binding one (gradient cut)."""
    approx_kl: Tensor
    """k3 estimate of KL(pi_old || pi) over masked tokens: mean of (r - 1) - log r."""
    ratio_mean: Tensor
    """Mean of r = pi / pi_old over masked tokens (1 at the first minibatch)."""
    tis_weight_mean: Tensor
    """Mean truncated importance weight w over masked tokens (1 when on-policy)."""
    tis_truncated_fraction: Tensor
    """Fraction of masked tokens whose weight pi_old / mu exceeded `tis_cap`."""
    dual_clip_fraction: Tensor
    """Fraction of masked tokens bounded by the dual clip (0 when it is off)."""


def truncated_importance_weights(
    old_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float | None
) -> Tensor:
    """w = min(exp(old - behaviour), cap), elementwise, without gradient.

    Args:
        old_logprobs: [B, T] log pi_old of the sampled tokens.
        behaviour_logprobs: [B, T] log mu of the same tokens, as the actor recorded them.
        cap: truncation level (e.g. 2.0); None keeps the raw ratio (untruncated IS).

    Returns:
        [B, T], > 0, <= cap.
    """
    w = (old_logprobs - behaviour_logprobs).detach().exp()
    return w if cap is None else w.clamp(max=cap)


def clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    behaviour_logprobs: Tensor | None = None,
    tis_cap: float | None = 2.0,
    dual_clip: float | None = None,
    token_count: float | Tensor | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """PPO-clip policy loss (to minimise), token-mean over `mask`.

    Args:
        logprobs: [B, T] log pi(a_t), with gradient.
        old_logprobs: [B, T] log pi_old(a_t) (recomputed by the learner before the epochs;
            pass the behaviour log-probs here for plain PPO on actor log-probs).
        advantages: [B, T] A_t (already whitened if wanted).
        mask: [B, T] bool, True on completion tokens.
        clip_eps: lower clip width: r is clipped below at 1 - clip_eps.
        clip_eps_high: upper clip width (1 + clip_eps_high); None means clip_eps.
        behaviour_logprobs: [B, T] log mu(a_t); None means mu = pi_old (w = 1).
        tis_cap: cap of the importance weight pi_old / mu; None leaves it untruncated.
        dual_clip: c > 1 bounding the loss of tokens with A < 0 at -c * A; None is off.
        token_count: denominator of the token-mean (see `masks.token_mean`); None is
            mask.sum().

    Returns:
        (loss scalar with gradient, PolicyLossStats). All-masked input gives loss 0.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError("dual_clip must be > 1")
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    logp = torch.where(mask, logprobs, zero)
    old = torch.where(mask, old_logprobs, zero).detach()
    adv = torch.where(mask, advantages, zero).detach()

    # The clamp keeps exp finite: an inf ratio would turn the zero gradient of the
    # non-binding branch into 0 * inf = NaN. At |log r| = 20 the clip binds long before.
    log_ratio = (logp - old).clamp(-_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
    ratio = log_ratio.exp()
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + eps_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    dual_hit = torch.zeros_like(mask)
    if dual_clip is not None:
        bound = -dual_clip * adv  # > 0 where adv < 0
        dual_hit = (adv < 0) & (loss > bound)
        loss = torch.where(dual_hit, bound, loss)

    if behaviour_logprobs is None:
        weights = torch.ones_like(old)
        truncated = torch.zeros_like(mask)
    else:
        behaviour = torch.where(mask, behaviour_logprobs, zero)
        weights = truncated_importance_weights(old, behaviour, tis_cap)
        truncated = torch.zeros_like(mask) if tis_cap is None else (old - behaviour).exp() > tis_cap

    with torch.no_grad():
        stats = PolicyLossStats(
            clip_fraction=masked_mean((loss_clipped > loss_unclipped).float(), mask),
            approx_kl=masked_mean((ratio - 1.0) - log_ratio, mask),
            ratio_mean=masked_mean(ratio, mask),
            tis_weight_mean=masked_mean(weights, mask),
            tis_truncated_fraction=masked_mean(truncated.float(), mask),
            dual_clip_fraction=masked_mean(dual_hit.float(), mask),
        )
    return token_mean(weights * loss, mask, token_count), stats


@dataclass(frozen=True, slots=True)
class ValueLossStats:
    """Detached scalar tensors."""

    clip_fraction: Tensor
    """Fraction of masked tokens where the clipped value's error was the larger one."""
    explained_variance: Tensor
    """1 - Var(returns - old_values) / Var(returns) over masked tokens (0 if Var = 0)."""


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
    token_count: float | Tensor | None = None,
) -> tuple[Tensor, ValueLossStats]:
    """PPO2 value loss: 0.5 * token-mean of max((V - R)^2, (V_clip - R)^2), where
    V_clip = V_old + clamp(V - V_old, -clip, clip).

    Args:
        values: [B, T] current value-head outputs, with gradient.
        old_values: [B, T] value outputs when the data was prepared (the GAE inputs).
        returns: [B, T] GAE returns (targets).
        mask: [B, T] bool, True on completion tokens.
        clip: clip width in value units; None gives the unclipped 0.5 * MSE.
        token_count: denominator of the token-mean (see `masks.token_mean`); None is
            mask.sum().

    Returns:
        (loss scalar with gradient, ValueLossStats). All-masked input gives loss 0.
    """
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    v = torch.where(mask, values, zero)
    v_old = torch.where(mask, old_values, zero).detach()
    ret = torch.where(mask, returns, zero).detach()
    err = (v - ret) ** 2
    v_clipped = v if clip is None else v_old + (v - v_old).clamp(-clip, clip)
    err_clipped = (v_clipped - ret) ** 2
    loss = 0.5 * token_mean(torch.maximum(err, err_clipped), mask, token_count)
    with torch.no_grad():
        var_ret = masked_mean((ret - masked_mean(ret, mask)) ** 2, mask)
        resid = ret - v_old
        var_resid = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
        explained = torch.where(var_ret > 0, 1.0 - var_resid / var_ret.clamp(min=1e-12), zero)
        stats = ValueLossStats(
            clip_fraction=masked_mean((err_clipped > err).float(), mask),
            explained_variance=explained,
        )
    return loss, stats
