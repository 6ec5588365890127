"""Per-token log-probabilities of the tokens actually present, from causal-LM logits.

The logits at position t predict token t+1, so a row of T tokens yields T-1 log-probs,
*target-aligned*: `out[:, t] = log p(input_ids[:, t+1] | input_ids[:, :t+1])`.

Memory: log p(y) = z_y - logsumexp(z). Only the gathered logit and the logsumexp ([B, T-1]
each) are kept, so the full [B, T-1, V] log-softmax is never materialised (a
`log_softmax` + `gather` would build it, and autograd would also save it for backward).
Logits are upcast to fp32 for the reduction; `chunk_size` bounds that upcast copy (and the
exp temporary inside logsumexp) when the logits are bf16 and no gradient is needed
(recomputing old or reference log-probs).
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(
    logits: Tensor,
    input_ids: Tensor,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """log p(input_ids[:, t+1]) under softmax(logits[:, t] / temperature).

    Args:
        logits: [B, T, V] raw model outputs (any float dtype).
        input_ids: [B, T] int token ids of the same rows.
        temperature: the sampling temperature the actors used; the behaviour log-probs they
            record are under softmax(z / temperature), so the learner must match it (top-p
            truncation is not reproduced; importance weights absorb that mismatch). Under
            autograd a temperature other than 1 saves one scaled fp32 copy of the logits.
        chunk_size: if set, process this many positions of T at a time, bounding the fp32
            temporaries to [B, chunk_size, V].

    Returns:
        [B, T-1] float32, target-aligned.
    """
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"need logits [B, T, V] and ids [B, T]; got {logits.shape}, {input_ids.shape}"
        )
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    n = logits.shape[1] - 1
    step = n if chunk_size is None else chunk_size
    # Slices along T are views: no [B, T-1, V] copy of fp32 logits is made.
    bounds = [(i, min(i + step, n)) for i in range(0, n, max(step, 1))]
    parts = [
        _picked_minus_lse(logits[:, i:j], input_ids[:, i + 1 : j + 1], temperature)
        for i, j in bounds
    ]
    return torch.cat(parts, dim=1) if parts else logits.new_zeros(logits.shape[0], 0).float()


def _picked_minus_lse(z: Tensor, y: Tensor, temperature: float) -> Tensor:
    """[B, c, V] logits and [B, c] targets -> [B, c] fp32 log-probs."""
    z = z.float()
    if temperature != 1.0:
        z = z / temperature
    return z.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)


def token_entropy(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / temperature) at each target-aligned position.

    Args:
        logits: [B, T, V].

    Returns:
        [B, T-1] float32 (a monitoring statistic; compute it under no_grad for large V).
    """
    z = logits[:, :-1].float() / temperature
    logp = torch.log_softmax(z, dim=-1)
    return -(logp.exp() * logp).sum(-1)
