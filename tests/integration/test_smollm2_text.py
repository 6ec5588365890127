"""Real text through SmolLM2-135M-Instruct's tokenizer (byte-level BPE, chat template):
step spans on the model's own generations, and task prompts through its chat template.

The generations are SmolLM2's completions of `word_problems` prompts, sampled at
temperature 1 and kept as the token ids the model produced (tests/data/, rebuilt by
`python -m tests.support.smollm2_generations`): sampled ids need not be the tokenizer's own
encoding of their text, which is what the property test must hold up to.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from actors.steps import (
    StepConfig,
    _prefix_char_starts,
    char_to_token_spans,
    segment_text,
    token_char_starts,
    token_spans,
)
from actors.tasks.base import load_task, with_tokenizer

GENERATIONS = Path(__file__).resolve().parents[1] / "data" / "smollm2_word_problems.json"


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def generations(tokenizer) -> list[list[int]]:
    data = json.loads(GENERATIONS.read_text())
    assert data["tokenizer_vocab_size"] == len(tokenizer)
    return [g["completion_token_ids"] for g in data["generations"]]


def test_the_generations_are_real_multi_line_text(tokenizer, generations):
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in generations]
    assert len(texts) >= 16
    multi = [t for t in texts if len(segment_text(t, StepConfig())) >= 3]
    assert len(multi) >= len(texts) // 2, texts


def test_token_starts_equal_the_slow_prefix_reference(tokenizer, generations):
    for ids in generations:
        starts, text = token_char_starts(ids, tokenizer)
        assert text == tokenizer.decode(ids, skip_special_tokens=True)
        assert starts == _prefix_char_starts(ids, tokenizer, len(text))


_CONFIGS = st.builds(StepConfig, min_step_chars=st.integers(0, 60), max_steps=st.integers(1, 24))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), config=_CONFIGS, eos=st.booleans())
def test_step_token_spans_are_the_character_spans_on_real_generations(
    tokenizer, generations, data, config, eos
):
    ids = data.draw(st.sampled_from(generations))
    if eos:
        ids = [*ids, tokenizer.eos_token_id]
    starts, text = token_char_starts(ids, tokenizer)
    chars = segment_text(text, config)
    spans = token_spans(ids, tokenizer, config)
    assert spans == char_to_token_spans(chars, starts)
    # a partition of the completion's tokens, in order, at most max_steps
    assert spans[0][0] == 0 and spans[-1][1] == len(ids) and len(spans) <= config.max_steps
    assert all(a < b == c for (a, b), (c, _) in zip(spans, spans[1:], strict=False))
    # each step's tokens decode to exactly the text between its first token's start and the
    # next step's: nothing lost, nothing doubled, nothing moved across a step boundary
    ends = [starts[b] if b < len(ids) else len(text) for _, b in spans]
    pieces = [tokenizer.decode(ids[a:b], skip_special_tokens=True) for a, b in spans]
    assert pieces == [text[starts[a] : end] for (a, _), end in zip(spans, ends, strict=True)]
    # each token lies in the step that holds its first character: a new step starts at
    # token t exactly when a step boundary lies in (start of t-1, start of t] (a boundary
    # inside a token, e.g. a "\n\n" token cut after its first newline, moves to its end)
    cuts = [end for _, end in chars[:-1]]
    firsts = [0] + [
        t for t in range(1, len(ids)) if any(starts[t - 1] < c <= starts[t] for c in cuts)
    ]
    assert [a for a, _ in spans] == firsts


def test_math_files_prompts_go_through_the_chat_template(tokenizer, tmp_path):
    path = tmp_path / "gsm.jsonl"
    rows = [
        {"question": f"Tom has {i} apples and buys 3. How many?", "answer": f"#### {i + 3}"}
        for i in range(40)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = load_task("math_files", train_path=str(path), heldout_percent=20)
    chat = with_tokenizer(
        load_task("math_files", train_path=str(path), heldout_percent=20), tokenizer
    )
    for split in ("train_prompts", "heldout_prompts"):
        before, after = getattr(plain, split)(), getattr(chat, split)()
        assert [p.id for p in before] == [p.id for p in after] and after  # the same split
        for p, q in zip(before, after, strict=True):
            assert q.text == tokenizer.apply_chat_template(
                [{"role": "user", "content": p.text.rstrip("\n")}],
                tokenize=False,
                add_generation_prompt=True,
            )
            assert q.text.endswith("<|im_start|>assistant\n") and p.text.strip() in q.text
            assert q.answer == p.answer
    prompt = chat.train_prompts()[0]
    assert (
        chat.score(prompt, f"So she has {prompt.answer} apples.\n\\boxed{{{prompt.answer}}}") == 1.0
    )


def test_word_problems_prompts_go_through_the_chat_template(tokenizer):
    plain = load_task("word_problems", n_train=50, n_heldout=20)
    chat = with_tokenizer(load_task("word_problems", n_train=50, n_heldout=20), tokenizer)
    for before, after in zip(plain.heldout_prompts(), chat.heldout_prompts(), strict=True):
        assert before.id == after.id and before.answer == after.answer
        assert after.text.endswith("<|im_start|>assistant\n")
        assert before.text.strip() in after.text
