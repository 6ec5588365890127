"""Unit tests of step segmentation: hand cases for each rule, and partition properties."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from actors.steps import (
    StepConfig,
    cap_steps,
    char_to_token_spans,
    merge_short,
    normalize_pieces,
    regex_splitter,
    segment_text,
    token_char_starts,
    token_spans,
)


class CharTokenizer:
    """One token per character; id 0 is a special EOS that decodes to nothing when skipped."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) + 1 for c in text]

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str:
        return "".join(
            ("" if skip_special_tokens else "<eos>") if t == 0 else chr(t - 1) for t in token_ids
        )


CORPUS = [
    "Step one: add 23 and 45 to get 68.\nStep two: subtract 12, which gives 56.\n",
    "héllo wörld, naïve café; 日本語のテキスト ∑ x² 😀🎉 done\n\n---\nThe answer is 42.\n",
    "Let x = 3. Then 2x + 1 = 7.\n\\boxed{7}\n",
]


def _bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE trained here: tokens can hold partial UTF-8 characters."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


BPE = _bpe_tokenizer()
CHARS = CharTokenizer()


def _assert_partition(spans: list[tuple[int, int]], n: int) -> None:
    if n == 0:
        assert spans == []
        return
    assert spans[0][0] == 0
    assert spans[-1][1] == n
    for (_, b), (c, _) in zip(spans, spans[1:], strict=False):
        assert b == c
    assert all(b > a for a, b in spans)


# --- text rules -------------------------------------------------------------------------


def test_regex_splitter_keeps_newline_with_piece():
    text = "ab\ncd\n\nef"
    assert regex_splitter(r"\n")(text) == [(0, 3), (3, 6), (6, 7), (7, 9)]


def test_short_piece_merges_into_next():
    text = "short\nthis line is long enough\n"
    pieces = regex_splitter(r"\n")(text)
    assert merge_short(text, pieces, 20) == [(0, len(text))]


def test_piece_without_alnum_merges_into_next_even_if_long():
    text = "--------------------------\nthe real step is right here\n"
    pieces = regex_splitter(r"\n")(text)
    assert merge_short(text, pieces, 5) == [(0, len(text))]


def test_short_tail_joins_previous_step():
    text = "a first step that is long\nok"
    pieces = regex_splitter(r"\n")(text)
    assert merge_short(text, pieces, 20) == [(0, len(text))]


def test_long_pieces_stay_separate():
    text = "a first step that is long\na second step also long\n"
    assert segment_text(text, StepConfig()) == [(0, 26), (26, len(text))]


def test_cap_merges_neighbours_evenly():
    pieces = [(i, i + 1) for i in range(10)]
    assert cap_steps(pieces, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert cap_steps(pieces, 10) == pieces


def test_task_splitter_pieces_are_not_merged_but_capped():
    text = "1+2=3\n3+4=7\nA: 7"
    lines = regex_splitter(r"\n")
    assert segment_text(text, StepConfig(), lines) == [(0, 6), (6, 12), (12, 16)]
    assert segment_text(text, StepConfig(max_steps=2), lines) == [(0, 6), (6, 16)]


def test_normalize_fills_gaps_and_cuts_overlaps():
    assert normalize_pieces([(2, 4), (6, 9), (8, 10)], 10) == [(0, 6), (6, 8), (8, 10)]
    assert normalize_pieces([], 5) == [(0, 5)]
    assert normalize_pieces([], 0) == []


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        StepConfig(max_steps=0)
    with pytest.raises(ValueError):
        StepConfig(split_pattern=r"\n*")


# --- token mapping --------------------------------------------------------------------------


def test_char_to_token_spans_assigns_boundary_token_to_its_first_char():
    # tokens start at chars 0, 3, 5, 8; steps are chars [0,4) and [4,10).
    # The token starting at 3 spans the boundary and goes to step 0.
    assert char_to_token_spans([(0, 4), (4, 10)], [0, 3, 5, 8]) == [(0, 2), (2, 4)]


def test_step_inside_one_token_disappears():
    assert char_to_token_spans([(0, 2), (2, 3), (3, 6)], [0, 1, 4]) == [(0, 2), (2, 3)]


def test_bpe_partial_utf8_tokens_start_at_the_character_they_build():
    text = "日本😀 héllo\nx"
    ids = BPE(text)["input_ids"] + [BPE.eos_token_id]
    starts, decoded = token_char_starts(ids, BPE)
    assert decoded == text
    # every token starts at a character that its bytes belong to, in order
    assert starts == sorted(starts)
    assert starts[-1] == len(text)  # EOS adds no character
    for i, s in enumerate(starts[:-1]):
        prefix = BPE.decode(ids[: i + 1])
        assert len(prefix.rstrip("\ufffd")) >= s


def test_token_spans_char_tokenizer_matches_text_spans():
    text = "a first step that is long\na second step also long\n"
    spans = token_spans(CHARS.encode(text) + [0], CHARS, StepConfig())
    assert spans == [(0, 26), (26, len(text) + 1)]  # EOS joins the last step


# --- properties -----------------------------------------------------------------------------

_TEXT = st.lists(
    st.sampled_from([*"ab 1=\n.é日😀-\ufffd", "step ", "answer\n", "\n\n"])
    | st.characters(codec="utf-8"),
    max_size=80,
).map("".join)
_CONFIGS = st.builds(
    StepConfig,
    min_step_chars=st.integers(0, 30),
    max_steps=st.integers(1, 30),
)
_PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPS
@given(text=_TEXT, config=_CONFIGS)
def test_text_spans_partition_text(text, config):
    spans = segment_text(text, config)
    _assert_partition(spans, len(text))
    assert len(spans) <= config.max_steps


@_PROPS
@given(text=_TEXT, config=_CONFIGS, eos=st.booleans())
def test_token_spans_partition_char_tokens(text, config, eos):
    ids = CHARS.encode(text) + ([0] if eos else [])
    spans = token_spans(ids, CHARS, config)
    _assert_partition(spans, len(ids))
    if not eos:  # one token per character: token spans are the character spans
        assert spans == segment_text(text, config)


@_PROPS
@given(text=_TEXT, config=_CONFIGS, eos=st.booleans())
def test_token_spans_partition_bpe_tokens(text, config, eos):
    ids = BPE(text)["input_ids"] + ([BPE.eos_token_id] if eos else [])
    spans = token_spans(ids, BPE, config)
    _assert_partition(spans, len(ids))
    assert len(spans) <= config.max_steps


@_PROPS
@given(text=_TEXT)
def test_bpe_starts_agree_with_slow_prefix_reference(text):
    ids = BPE(text)["input_ids"]
    starts, decoded = token_char_starts(ids, BPE)
    assert decoded == text
    for i, s in enumerate(starts):
        settled = len(BPE.decode(ids[:i]).rstrip("\ufffd"))
        assert s == settled


class CleanupTokenizer(CharTokenizer):
    """Decodes like old tokenizers with `clean_up_tokenization_spaces`: ' .' becomes '.'."""

    def decode(self, token_ids, skip_special_tokens: bool = False) -> str:
        return super().decode(token_ids, skip_special_tokens).replace(" .", ".")


def test_context_dependent_decoder_falls_back_to_prefix_decoding():
    text = "first step is here .\nsecond step is here .\n"
    ids = CHARS.encode(text)
    starts, decoded = token_char_starts(ids, CleanupTokenizer())
    assert decoded == text.replace(" .", ".")
    assert starts == sorted(starts) and starts[-1] < len(decoded)
    _assert_partition(token_spans(ids, CleanupTokenizer(), StepConfig()), len(ids))
