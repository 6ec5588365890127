"""The `word_problems` task: answers checked against an independent solver of the statements,
splits, scoring through math-verify, first wrong steps, and chat-template formatting."""

from __future__ import annotations

import random
import re

import pytest

from actors.tasks.base import ChatPrompts, StepChecker, load_task, steps_of, with_tokenizer
from actors.tasks.word_problems import (
    INSTRUCTIONS,
    WordProblems,
    answer_text,
    generate,
    miscalculates,
    stated_result,
)


def solve(statement: str) -> tuple[int, list[int]]:
    """An independent reading of a statement: its answer and each event's running total."""
    sentences = re.findall(r"[^.?]+[.?]", statement)
    value = int(re.match(r"\w+ has (\d+) ", sentences[0]).group(1))
    totals = []
    for s in sentences[1:-1]:
        nums = [int(n) for n in re.findall(r"\d+", s)]
        if "more" in s:
            value += nums[0]
        elif " in each" in s:
            value += nums[0] * nums[1]
        elif " gives " in s or "get lost" in s:
            value -= nums[0]
        elif "doubles" in s:
            value *= 2
        elif "shares them equally among" in s:
            assert value % nums[0] == 0
            value //= nums[0]
        else:
            raise AssertionError(f"unknown event: {s!r}")
        totals.append(value)
    assert sentences[-1].startswith(" How many")
    return value, totals


def test_every_answer_is_what_an_independent_solver_reads_from_the_statement():
    rng = random.Random(7)
    for _ in range(2000):
        problem = generate(rng, 2, 4)
        answer, totals = solve(problem.statement)
        assert problem.answer == answer >= 0
        assert set(totals) <= problem.values and 2 <= len(totals) <= 4


def test_splits_are_deterministic_disjoint_and_sized():
    a = WordProblems(seed=3, n_train=300, n_heldout=40)
    b = WordProblems(seed=3, n_train=300, n_heldout=40)
    train, held = a.train_prompts(), a.heldout_prompts()
    assert (len(train), len(held)) == (300, 40)
    assert train == b.train_prompts() and held == b.heldout_prompts()
    assert not {p.text for p in train} & {p.text for p in held}
    assert len({p.id for p in train + held}) == 340
    assert all(p.text.endswith(INSTRUCTIONS + "\n") for p in train)  # no tokenizer: plain
    assert WordProblems(seed=4, n_train=300, n_heldout=40).train_prompts() != train


def canonical(task: WordProblems, prompt) -> str:
    """A right solution, one line per event (each line long enough to be its own step)."""
    statement = prompt.text.split("\n\n")[0]
    answer, totals = solve(statement)
    lines = [f"After that event the total is now = {t} items." for t in totals]
    return "\n".join([*lines, f"Answer: {answer}"])


def test_score_reads_the_answer_line_with_math_verify():
    task = WordProblems(n_train=50, n_heldout=5)
    prompt = task.train_prompts()[0]
    good = canonical(task, prompt)
    assert task.score(prompt, good) == 1.0
    assert task.score(prompt, good.replace(f"Answer: {prompt.answer}", "Answer: 100000")) == 0.0
    assert task.score(prompt, f"work\n**Answer:** {prompt.answer} items") == 1.0
    # the last answer line counts; without one, the completion's final expression
    assert task.score(prompt, f"Answer: 100000\nAnswer: {prompt.answer}") == 1.0
    assert task.score(prompt, f"so it is {prompt.answer}") == 1.0
    assert task.score(prompt, "no idea") == 0.0
    assert answer_text("a\nanswer: 12\n") == "12"


def test_first_wrong_step_is_the_first_step_stating_a_wrong_result():
    task = WordProblems(n_train=200, n_heldout=5)
    assert isinstance(task, StepChecker) and isinstance(task, ChatPrompts)
    prompt = next(p for p in task.train_prompts() if len(solve(p.text.split("\n\n")[0])[1]) >= 3)
    good = canonical(task, prompt)
    assert task.first_wrong_step(prompt, good) is None  # right: nothing to find
    lines = good.split("\n")
    bad = "\n".join([lines[0], "Then the total is now = 100001 items.", *lines[2:]])
    bad = bad.replace(f"Answer: {prompt.answer}", "Answer: 100001")
    # each line its own step, but the short answer line, which joins the step before it
    assert len(steps_of(task, bad)) == len(lines) - 1
    assert task.first_wrong_step(prompt, bad) == 1
    only_answer = "\n".join([*lines[:-1], "Answer: 100001"])
    assert task.first_wrong_step(prompt, only_answer) == len(lines) - 2
    # no step states anything wrong, and the answer is missing: unknowable
    assert task.first_wrong_step(prompt, "I think about it for a while.") is None
    # a slip on a value the chain passes through: caught by its arithmetic
    start = int(re.match(r"\w+ has (\d+) ", prompt.text).group(1))
    slip = f"She has {start} + 1 = {start} things now.\nAnswer: 100001"
    assert task.first_wrong_step(prompt, slip) == 0
    assert miscalculates("so 21 - 8 = 14 are left") and not miscalculates("21 - 7 = 14, 3 x 5 = 15")
    assert not miscalculates("12 ÷ 4 = 3 each") and miscalculates("12 / 5 = 2")
    assert stated_result("so 27 - 7 = 20 apples are left") == 20
    assert stated_result("Answer: 1,200 coins") == 1200
    assert stated_result("12 + 15 makes twenty-seven") is None


class ChatTokenizer:
    """What the task uses of a transformers tokenizer with a chat template."""

    chat_template = "<template>"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        (message,) = messages
        return f"<user>{message['content']}</user><assistant>"


def test_prompts_go_through_the_tokenizers_chat_template_and_keep_their_split():
    plain = WordProblems(n_train=100, n_heldout=10)
    chat = with_tokenizer(load_task("word_problems", n_train=100, n_heldout=10), ChatTokenizer())
    for a, b in zip(plain.train_prompts(), chat.train_prompts(), strict=True):
        assert (a.id, a.answer) == (b.id, b.answer)
        assert b.text == f"<user>{a.text.rstrip(chr(10))}</user><assistant>"
    # first_wrong_step finds the problem by its id, whatever the template
    prompt = chat.train_prompts()[0]
    wrong = "It is = 100001 now, all in all.\nAnswer: 100001"
    assert chat.first_wrong_step(prompt, wrong) == 0


@pytest.mark.parametrize(
    "options", [{"min_events": 0}, {"min_events": 3, "max_events": 2}, {"n_train": 0}]
)
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError):
        WordProblems(**options)
