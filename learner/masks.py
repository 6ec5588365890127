"""Loss masks and masked reductions for packed (prefix + completion + padding) rows.

Layout of one row of `input_ids` [B, T] (right padding only):

    | prefix (P tokens: prompt, plus kept steps of a reset) | completion (C tokens) | pad |

Everything trained on is *target-aligned*: index t of a [B, T-1] tensor refers to the
prediction of `input_ids[:, t + 1]` from the logits at position t (see `logprobs.py`). The
completion tokens sit at `input_ids` positions P .. P+C-1, hence at target-aligned positions
P-1 .. P+C-2. Prefix targets and padding get mask False: no gradient, no weight in means.

Invariants: masks are bool; every masked reduction returns 0 (never NaN) when nothing is
selected; masked-out entries of the inputs may hold any finite or non-finite value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def completion_mask(prefix_lens: Tensor, completion_lens: Tensor, seq_len: int) -> Tensor:
    """Target-aligned loss mask selecting only completion tokens.

    Args:
        prefix_lens: [B] int, P per row (>= 1: a completion is always conditioned on
            something, and the first token of a row is never a target).
        completion_lens: [B] int, C per row (>= 0); P + C <= seq_len.
        seq_len: T, the padded length of `input_ids`.

    Returns:
        [B, T-1] bool: True exactly at target positions P-1 .. P+C-2.
    """
    prefix_lens = torch.as_tensor(prefix_lens)
    completion_lens = torch.as_tensor(completion_lens)
    if prefix_lens.shape != completion_lens.shape or prefix_lens.dim() != 1:
        raise ValueError("prefix_lens and completion_lens must both have shape [B]")
    if bool((prefix_lens < 1).any()) or bool((completion_lens < 0).any()):
        raise ValueError("need prefix_lens >= 1 and completion_lens >= 0")
    if bool((prefix_lens + completion_lens > seq_len).any()):
        raise ValueError(f"prefix + completion exceeds seq_len={seq_len}")
    pos = torch.arange(seq_len - 1, device=prefix_lens.device)  # [T-1]
    start = (prefix_lens - 1).unsqueeze(1)  # [B, 1]
    end = start + completion_lens.unsqueeze(1)  # [B, 1], exclusive
    return (pos >= start) & (pos < end)


def to_targets(token_values: Tensor) -> Tensor:
    """Token-aligned [B, T] (index t is about input_ids[t], as in the Sample message's
    `loss_mask`, `logprobs`, `advantages`, `returns`) -> target-aligned [B, T-1].

    Drops index 0: the first token of a row is never predicted (and is always prefix).
    Returns a view.
    """
    return token_values[:, 1:]


def place_completion_values(
    values: Sequence[Tensor],
    prefix_lens: Tensor,
    seq_len: int,
    fill: float = 0.0,
) -> Tensor:
    """Scatter per-completion-token values (behaviour logprobs, advantages, returns) into
    a target-aligned [B, T-1] tensor.

    Args:
        values: B tensors, row b of shape [C_b] (one entry per completion token, as carried
            by the wire messages).
        prefix_lens: [B] int, P per row.
        seq_len: T.
        fill: value at every position outside the completion.

    Returns:
        [B, T-1] float32; row b holds `values[b]` at positions P_b-1 .. P_b+C_b-2.
    """
    prefix_lens = torch.as_tensor(prefix_lens)
    if len(values) != prefix_lens.numel():
        raise ValueError("need one values tensor per row")
    out = torch.full((len(values), seq_len - 1), fill, dtype=torch.float32)
    for b, row in enumerate(values):
        start = int(prefix_lens[b]) - 1
        if start < 0 or start + row.numel() > seq_len - 1:
            raise ValueError(f"row {b}: completion does not fit in seq_len={seq_len}")
        out[b, start : start + row.numel()] = row.to(torch.float32)
    return out


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` where `mask` is True; masked-out entries are ignored even if NaN or inf.

    Shapes: `x` and `mask` broadcast together; `dim=None` reduces everything to a scalar.
    """
    selected = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return selected.sum() if dim is None else selected.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over True entries of `mask`; 0 (not NaN) where nothing is selected.

    With `dim=None` this is the token-mean over the whole batch (a scalar); with `dim=-1`
    it is one mean per row, [B].
    """
    count = mask.expand_as(x).sum() if dim is None else mask.expand_as(x).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def token_mean(x: Tensor, mask: Tensor, token_count: float | Tensor | None = None) -> Tensor:
    """Masked sum of `x` divided by `token_count` (a scalar; 0 if nothing is selected).

    `token_count=None` uses this batch's own count (`masked_mean`). With gradient
    accumulation over micro-batches, pass the token count of the whole optimizer step so
    that every token weighs the same whichever micro-batch it landed in.
    """
    if token_count is None:
        return masked_mean(x, mask)
    count = torch.as_tensor(token_count, dtype=x.dtype, device=x.device).clamp(min=1)
    return masked_sum(x, mask) / count


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = False) -> Tensor:
    """Variance of `x` over all True entries of `mask` (a scalar); 0 when fewer than
    two entries (unbiased) or none (biased) are selected."""
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    n = mask.expand_as(x).sum()
    denom = (n - 1) if unbiased else n
    return torch.where(denom > 0, sq / denom.clamp(min=1).to(x.dtype), torch.zeros_like(sq))
