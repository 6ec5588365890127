"""KL divergence from the current policy to the reference policy (the base model with the
LoRA adapter disabled), estimated per token from sampled tokens.

k3 estimator (Schulman, "Approximating KL divergence"): with log r = ref - logp,
    k3 = exp(log r) - log r - 1,
an unbiased, always non-negative estimate of KL(pi || ref) on tokens sampled from pi, with
lower variance than -log r. The log-ratio is clamped to +-`log_ratio_clip` before the exp so
that one token the reference finds extremely likely cannot overflow the loss.
"""

from __future__ import annotations

from torch import Tensor

from learner.masks import token_mean


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor, log_ratio_clip: float = 20.0) -> Tensor:
    """Per-token k3 estimate of KL(pi || ref).

    Args:
        logprobs: [B, T] log pi(token), with gradient.
        ref_logprobs: [B, T] log ref(token), no gradient needed.
        log_ratio_clip: bound on |ref - logp| before exponentiating.

    Returns:
        [B, T], >= 0; 0 exactly where the two agree.
    """
    log_ratio = (ref_logprobs - logprobs).clamp(-log_ratio_clip, log_ratio_clip)
    return log_ratio.exp() - log_ratio - 1.0


def masked_k3_kl(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    log_ratio_clip: float = 20.0,
    token_count: float | Tensor | None = None,
) -> Tensor:
    """Token-mean of `k3_kl` over True entries of `mask` [B, T]; a scalar, 0 if empty.
    `token_count` overrides the denominator as in `masks.token_mean`.

    Masked-out entries may hold anything (padding garbage, -inf): they are zeroed before the
    exp, so neither the value nor the gradient can become NaN.
    """
    safe_ref = ref_logprobs.masked_fill(~mask, 0.0)
    safe_logp = logprobs.masked_fill(~mask, 0.0)
    return token_mean(k3_kl(safe_logp, safe_ref, log_ratio_clip), mask, token_count)
