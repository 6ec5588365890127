"""Which token sequences to prefill so that every shared prefix is computed once.

A causal model's KV cache for the first L tokens of a sequence is the KV cache of those L
tokens alone, so a prompt that is a prefix of another prompt in the batch needs no forward
pass of its own: its samples read the longer prompt's cache row with the attention mask
cut after L tokens. The estimator's batches are exactly this shape (the prefixes of one
trajectory, each with many samples), and a request's `n` samples share one row as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

PrefixReuse = Literal["shared", "request", "off"]
"""`shared`: one row per prompt not contained in another; `request`: one row per request;
`off`: one row per sample (the baseline that `model.generate` implements)."""


@dataclass(frozen=True, slots=True)
class PrefillPlan:
    """Prefill rows and, for every sample (request order, then sample order), where it reads."""

    rows: list[tuple[int, ...]]
    """Token sequences to run through the model, one KV-cache row each."""
    sample_row: list[int]
    """Per sample: index into `rows` of the row holding its prompt."""
    sample_prompt_len: list[int]
    """Per sample: its prompt is `rows[sample_row[i]][:sample_prompt_len[i]]`."""


def plan_prefill(
    prompts: Sequence[Sequence[int]], ns: Sequence[int], mode: PrefixReuse
) -> PrefillPlan:
    """Plan the prefill of requests with prompts `prompts` and `ns[i]` samples each."""
    if len(prompts) != len(ns):
        raise ValueError("one n per prompt")
    keys = [tuple(p) for p in prompts]
    if mode == "off":
        rows = [k for k, n in zip(keys, ns, strict=True) for _ in range(n)]
        return PrefillPlan(rows, list(range(len(rows))), [len(r) for r in rows])
    if mode == "request":
        sample_row = [i for i, n in enumerate(ns) for _ in range(n)]
        return PrefillPlan(keys, sample_row, [len(keys[i]) for i in sample_row])
    if mode != "shared":
        raise ValueError(f"unknown prefix reuse mode {mode!r}")
    root = _roots(sorted(set(keys)))
    rows = sorted(set(root.values()))
    row_index = {r: i for i, r in enumerate(rows)}
    sample_row, sample_len = [], []
    for key, n in zip(keys, ns, strict=True):
        sample_row += [row_index[root[key]]] * n
        sample_len += [len(key)] * n
    return PrefillPlan(rows, sample_row, sample_len)


def _roots(unique_sorted: list[tuple[int, ...]]) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Map each prompt to a prompt in the list that starts with it (itself when none).

    In lexicographic order, a prompt with any extension in the list is a prefix of its
    successor, so one backward pass chains each prompt to its successor's root.
    """
    root: dict[tuple[int, ...], tuple[int, ...]] = {}
    successor_root: tuple[int, ...] | None = None
    successor: tuple[int, ...] | None = None
    for key in reversed(unique_sorted):
        if successor is not None and successor[: len(key)] == key:
            root[key] = successor_root  # type: ignore[assignment]
        else:
            root[key] = key
        successor, successor_root = key, root[key]
    return root
