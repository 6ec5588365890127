"""Sampling math for the transformers engine: pure functions over logits, plus per-sample RNGs.

The logprob an engine reports must be the one the learner recomputes, so this module fixes
the sampling distribution in one place: `log_softmax(logits / temperature)`, then top-p keeps
the smallest set of most likely tokens whose mass reaches `top_p` and renormalises over it.
Sampling uses one uniform number per row and an inverse-CDF lookup, so sample j of a request
draws only from its own stream `sample_rng(seed, j)`: its tokens do not depend on the other
rows of the batch.
"""

from __future__ import annotations

import random

import torch


def sampling_logprobs(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """Log-probabilities of the sampling distribution; tokens outside the nucleus get -inf.

    logits: [B, V] (any float dtype); temperature, top_p: [B] float32. Returns [B, V] float32
    whose rows each sum (in probability) to 1.
    """
    logp = torch.log_softmax(logits.float() / temperature[:, None], dim=-1)
    if bool((top_p >= 1.0).all()):
        return logp
    sorted_logp, order = logp.sort(dim=-1, descending=True)
    mass_before = sorted_logp.exp().cumsum(dim=-1) - sorted_logp.exp()
    # A token is dropped once the tokens above it already hold top_p; the first always stays.
    drop_sorted = mass_before >= top_p[:, None]
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    kept = logp.masked_fill(drop, float("-inf"))
    return kept - torch.logsumexp(kept, dim=-1, keepdim=True)


def sample_tokens(logp: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sampling: row b takes the first token whose cumulative mass exceeds u_b.

    logp: [B, V] from `sampling_logprobs`; uniforms: [B] in [0, 1). Returns (tokens [B] int64,
    their logprobs [B] float32). A token with zero probability is never chosen.
    """
    cdf = logp.exp().cumsum(dim=-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1])[:, None]
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    tokens = tokens.clamp(max=logp.shape[-1] - 1)
    # Rounding can put the target past the last kept token; step back onto the last kept one.
    bad = torch.isinf(logp.gather(-1, tokens[:, None]).squeeze(-1))
    if bool(bad.any()):
        positions = torch.arange(logp.shape[-1], device=logp.device).expand_as(logp)
        last_kept = torch.where(torch.isfinite(logp), positions, -1).amax(dim=-1)
        tokens = torch.where(bad, last_kept, tokens)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)


def sample_rng(seed: int, sample_index: int) -> random.Random:
    """The random stream of sample `sample_index` of a request seeded `seed` (stable across runs)."""
    return random.Random(f"gpo-sample:{seed}:{sample_index}")
