"""Step segmentation (GPO.md, algorithm step 1): completion text -> reasoning steps -> token spans.

Two stages, each a pure function:

1. `segment_text` cuts the completion text into character spans. The default splitter cuts
   after every newline; a piece shorter than `min_step_chars` or without a letter or digit is
   merged into the next piece; then at most `max_steps` steps are kept by merging neighbours
   evenly. A task may supply its own splitter (`Task.split_steps`): its pieces are taken as
   the steps (the task knows what a step is, e.g. one arithmetic line of 9 characters), and
   only the `max_steps` cap is applied to them.
2. `token_spans` maps those character spans onto the completion's token ids. Each token
   belongs to exactly one step: the step that holds the token's first character. A token
   that adds no complete character (a partial UTF-8 byte of byte-level BPE, or a special
   token such as EOS) belongs to the step of the next character it starts building.

Invariants of the result: `(start, end)` token ranges, in order, non-empty, that partition
`[0, len(token_ids))` with no gap or overlap; `[]` for an empty completion.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

Span = tuple[int, int]
"""A half-open range `[start, end)` of character or token indices."""

Splitter = Callable[[str], list[Span]]
"""Text -> character spans of its pieces (a task's `split_steps` has this shape)."""

_REPLACEMENT = "\ufffd"  # what a decoder emits for an incomplete UTF-8 sequence


@dataclass(frozen=True, slots=True)
class StepConfig:
    """How completions are cut into reasoning steps."""

    min_step_chars: int = 20
    """A piece shorter than this (characters, surrounding whitespace stripped) joins the next."""
    max_steps: int = 24
    """Upper bound on the number of steps; extra pieces are merged with neighbours evenly."""
    split_pattern: str = r"\n"
    """Regex of the default splitter; a piece ends right after each match (keeps the match)."""

    def __post_init__(self) -> None:
        if self.min_step_chars < 0:
            raise ValueError(f"min_step_chars must be >= 0, got {self.min_step_chars}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if re.compile(self.split_pattern).match(""):
            raise ValueError(f"split_pattern {self.split_pattern!r} matches the empty string")


class Decoder(Protocol):
    """The part of a tokenizer that segmentation uses (any transformers tokenizer fits)."""

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


def regex_splitter(pattern: str) -> Splitter:
    """A splitter whose pieces end right after each match of `pattern` (the match is kept)."""
    compiled = re.compile(pattern)

    def split(text: str) -> list[Span]:
        cuts = [m.end() for m in compiled.finditer(text) if m.end() > m.start()]
        bounds = [0, *cuts, len(text)]
        return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]

    return split


def normalize_pieces(spans: Sequence[Span], n_chars: int) -> list[Span]:
    """Turn a splitter's spans into a partition of `[0, n_chars)` of non-empty pieces.

    Spans are clipped and sorted; a gap between pieces joins the piece before it (a leading
    gap joins the first piece); overlaps are cut at the later start. A splitter that returns
    nothing for non-empty text gives one piece.
    """
    starts = sorted({min(max(s, 0), n_chars) for s, e in spans if min(e, n_chars) > max(s, 0)})
    if n_chars == 0:
        return []
    if not starts or starts[0] != 0:
        starts = [0, *starts[1:]] if starts else [0]
    bounds = [*starts, n_chars]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def merge_short(text: str, pieces: Sequence[Span], min_chars: int) -> list[Span]:
    """Merge each piece that is short or has no letter/digit into the next piece.

    A piece is short when its text, stripped of surrounding whitespace, has fewer than
    `min_chars` characters. Merging repeats until the merged piece qualifies; a short tail
    with no next piece joins the previous step (or stands alone if it is the only one).
    """
    merged: list[Span] = []
    start: int | None = None
    for a, b in pieces:
        start = a if start is None else start
        piece = text[start:b]
        if len(piece.strip()) >= min_chars and any(c.isalnum() for c in piece):
            merged.append((start, b))
            start = None
    if start is not None:
        end = pieces[-1][1]
        if merged:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def cap_steps(pieces: Sequence[Span], max_steps: int) -> list[Span]:
    """Merge consecutive pieces into `max_steps` groups of near-equal piece counts.

    Group g holds pieces `[g*n // max_steps, (g+1)*n // max_steps)`; fewer pieces pass as is.
    """
    n = len(pieces)
    if n <= max_steps:
        return list(pieces)
    cuts = [g * n // max_steps for g in range(max_steps + 1)]
    return [(pieces[a][0], pieces[b - 1][1]) for a, b in zip(cuts, cuts[1:], strict=False)]


def segment_text(text: str, config: StepConfig, splitter: Splitter | None = None) -> list[Span]:
    """Character spans of the reasoning steps of `text`; they partition `[0, len(text))`.

    `splitter` is a task's own splitter: its pieces are the steps, only capped. Without one,
    the regex splitter of `config` is used and short pieces are merged first.
    """
    if splitter is not None:
        pieces = normalize_pieces(splitter(text), len(text))
    else:
        raw = normalize_pieces(regex_splitter(config.split_pattern)(text), len(text))
        pieces = merge_short(text, raw, config.min_step_chars)
    return cap_steps(pieces, config.max_steps)


def token_char_starts(token_ids: Sequence[int], tokenizer: Decoder) -> tuple[list[int], str]:
    """The character offset at which each token starts, and the decoded text.

    Decodes incrementally over a short window (like streaming detokenizers), so it is linear
    in the number of tokens and correct for tokenizers whose decoding depends on context
    (SentencePiece's leading space, byte-level BPE's partial UTF-8 characters). Special tokens
    are skipped: they add no characters. If the incremental text is not a prefix of the full
    decode (an exotic decoder), falls back to decoding every prefix (quadratic, monotone).
    """
    ids = list(token_ids)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    starts: list[int] = []
    text = ""  # settled text: decoded tokens [0, read_offset)
    done = 0  # characters completed by the tokens so far (settled or not)
    prefix_offset = read_offset = 0
    for i in range(len(ids)):
        starts.append(done)
        before = tokenizer.decode(ids[prefix_offset:read_offset], skip_special_tokens=True)
        after = tokenizer.decode(ids[prefix_offset : i + 1], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            text += after[len(before) :]
            prefix_offset, read_offset = read_offset, i + 1
            done = len(text)
        else:  # a partial character: count the characters completed before it
            done = max(done, len(text) + len(after.rstrip(_REPLACEMENT)) - len(before))
    if full.startswith(text):
        return starts, full
    return _prefix_char_starts(ids, tokenizer, len(full)), full


def _prefix_char_starts(ids: list[int], tokenizer: Decoder, n_chars: int) -> list[int]:
    """Slow reference: start of token i = length of the settled decode of `ids[:i]`."""
    starts, low = [], 0
    for i in range(len(ids)):
        prefix = tokenizer.decode(ids[:i], skip_special_tokens=True).rstrip(_REPLACEMENT)
        low = min(max(low, len(prefix)), n_chars)
        starts.append(low)
    return starts


def char_to_token_spans(char_spans: Sequence[Span], starts: Sequence[int]) -> list[Span]:
    """Token ranges of the steps, given each token's start character (non-decreasing).

    Token t goes to the step whose character span holds `starts[t]` (offsets at or past the
    end of the text go to the last step). A step that receives no token (it lies inside one
    long token) disappears; the result still partitions `[0, len(starts))`.
    """
    n_tokens = len(starts)
    if n_tokens == 0 or not char_spans:
        return [(0, n_tokens)] if n_tokens else []
    token_spans: list[Span] = []
    t = 0
    for k, (_, char_end) in enumerate(char_spans):
        first = t
        if k == len(char_spans) - 1:
            t = n_tokens
        else:
            while t < n_tokens and starts[t] < char_end:
                t += 1
        if t > first:
            token_spans.append((first, t))
    return token_spans


def token_spans(
    token_ids: Sequence[int],
    tokenizer: Decoder,
    config: StepConfig,
    splitter: Splitter | None = None,
) -> list[Span]:
    """Token ranges of the reasoning steps of a completion (see the module invariants)."""
    starts, text = token_char_starts(token_ids, tokenizer)
    return char_to_token_spans(segment_text(text, config, splitter), starts)
