"""Unit tests of the task interface, the arithmetic task and the math-files task."""

from __future__ import annotations

import json

import pytest

from actors.steps import StepConfig, token_spans
from actors.tasks import StepChecker, StepSplitter, Task, TaskPrompt, load_task, steps_of
from actors.tasks.arithmetic import ALPHABET, Arithmetic, answer, is_heldout, solution
from actors.tasks.math_files import (
    MathFiles,
    extract_boxed,
    extract_gsm8k_answer,
    problem_and_answer,
    read_rows,
)

# --- load_task ------------------------------------------------------------------------------


def test_load_task_by_spec_and_short_name_with_options():
    task = load_task("actors.tasks.arithmetic:Arithmetic", n_train=5, n_heldout=3)
    assert isinstance(task, Task) and isinstance(task, StepSplitter)
    assert isinstance(task, StepChecker)
    assert len(task.train_prompts()) == 5
    assert (
        load_task("arithmetic", seed=3, n_train=2).train_prompts()
        == Arithmetic(seed=3, n_train=2).train_prompts()
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("arithmetic.Arithmetic", "expected 'package.module:Class'"),
        ("actors.tasks.nope:X", "cannot import"),
        ("actors.tasks.arithmetic:Nope", "has no 'Nope'"),
        ("actors.steps:StepConfig", "does not implement the Task protocol"),
    ],
)
def test_load_task_errors_say_why(spec, message):
    with pytest.raises(ValueError, match=message):
        load_task(spec)


def test_load_task_rejects_unknown_option():
    with pytest.raises(ValueError, match="rejected options"):
        load_task("arithmetic", n_layers=3)


# --- arithmetic -----------------------------------------------------------------------------


def test_solution_is_one_checkable_line_per_operation():
    assert solution("Q: 23+45-12+7\n") == "23+45=68\n68-12=56\n56+7=63\nA: 63"
    assert answer("Q: 23+45-12+7\n") == "63"


def test_arithmetic_is_deterministic_and_split_is_disjoint():
    a = Arithmetic(seed=1, n_train=400, n_heldout=100)
    b = Arithmetic(seed=1, n_train=400, n_heldout=100)
    assert a.train_prompts() == b.train_prompts()
    assert a.heldout_prompts() == b.heldout_prompts()
    train_texts = {p.text for p in a.train_prompts()}
    held_texts = {p.text for p in a.heldout_prompts()}
    assert len(train_texts) == 400 and len(held_texts) == 100
    assert not train_texts & held_texts
    # membership depends on the text only, so another seed's training set avoids it too
    other = Arithmetic(seed=2, n_train=400, n_heldout=10)
    assert not {p.text for p in other.train_prompts()} & held_texts
    assert all(is_heldout(t, 10) for t in held_texts)


def test_arithmetic_respects_difficulty_knobs():
    task = Arithmetic(min_ops=3, max_ops=3, max_operand=9, max_value=20, n_train=200)
    for p in task.train_prompts():
        lines = solution(p.text).split("\n")
        assert len(lines) == 4
        values = [int(line.split("=")[1]) for line in lines[:-1]]
        assert all(0 <= v <= 20 for v in values)
        assert set(p.text + solution(p.text)) <= set(ALPHABET)


def test_arithmetic_score_and_first_wrong_step():
    task = Arithmetic()
    p = TaskPrompt("t", "Q: 23+45-12+7\n", "63")
    assert task.score(p, "23+45=68\n68-12=56\n56+7=63\nA: 63") == 1.0
    assert task.first_wrong_step(p, "23+45=68\n68-12=56\n56+7=63\nA: 63") is None
    # wrong at line 1, which then propagates: the first wrong step is 1
    wrong = "23+45=68\n68-12=55\n55+7=62\nA: 62"
    assert task.score(p, wrong) == 0.0
    assert task.first_wrong_step(p, wrong) == 1
    # a lucky right answer after a wrong line still has a wrong step
    assert task.first_wrong_step(p, "23+45=69\n68-12=56\n56+7=63\nA: 63") == 0
    # stopping early: the last step (which ended the trace) is the wrong one
    assert task.first_wrong_step(p, "23+45=68\n68-12=56\n") == 1
    assert task.score(p, "23+45=68\n68-12=56\n") == 0.0
    assert task.first_wrong_step(p, "") is None
    assert task.first_wrong_step(p, "A: 63") == 0


def test_arithmetic_step_index_matches_token_spans():
    task = Arithmetic()
    completion = "23+45=68\n68-12=55\n55+7=62\nA: 62"
    chars = steps_of(task, completion)
    assert [completion[a:b] for a, b in chars] == ["23+45=68\n", "68-12=55\n", "55+7=62\n", "A: 62"]

    class Chars:
        def decode(self, ids, skip_special_tokens=False):
            return "".join(chr(i) for i in ids)

    spans = token_spans([ord(c) for c in completion], Chars(), StepConfig(), task.split_steps)
    assert spans == chars


# --- math files -----------------------------------------------------------------------------

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3+4=7\n#### 7"},
    {"question": "A shop sells 1,000 pens a day. How many in 2 days?", "answer": "#### 2,000"},
    {"question": "What is 6 times 7?", "answer": "6*7=42\n#### 42"},
]
MATH_ROWS = [
    {"problem": "Compute $1/2 + 1/4$.", "solution": "It is $\\boxed{\\frac{3}{4}}$."},
    {"problem": "Solve $x+1=3$.", "answer": "2", "unique_id": "algebra/1.json"},
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_answer_extraction():
    assert extract_gsm8k_answer("so 7 apples\n#### 1,234") == "1234"
    assert extract_gsm8k_answer("no marker") is None
    assert extract_boxed("a \\boxed{\\frac{1}{2}} then \\boxed{x^{2}}") == "x^{2}"
    assert extract_boxed("\\boxed 5$") == "5"
    assert extract_boxed("\\boxed{unclosed") is None
    assert problem_and_answer(MATH_ROWS[0]) == ("Compute $1/2 + 1/4$.", "\\frac{3}{4}")
    with pytest.raises(ValueError, match="neither"):
        problem_and_answer({"text": "x"})


def test_math_files_gsm8k_split_and_scoring(tmp_path):
    rows = [
        {"question": f"Q{i}: what is {i} plus 1?", "answer": f"#### {i + 1}"} for i in range(60)
    ]
    path = _write_jsonl(tmp_path / "gsm.jsonl", GSM8K_ROWS + rows)
    task = MathFiles(train_path=path, heldout_percent=20, name="gsm8k")
    train, held = task.train_prompts(), task.heldout_prompts()
    assert len(train) + len(held) == 63
    assert 0 < len(held) < 30
    assert not {p.text for p in train} & {p.text for p in held}
    assert MathFiles(train_path=path, heldout_percent=20, name="gsm8k").heldout_prompts() == held

    p = TaskPrompt("x", "A shop ...", "2000")
    assert task.score(p, "500*2*2 = 2000 pens.\n#### 2,000") == 1.0
    assert task.score(p, "So the answer is $\\boxed{2000}$.") == 1.0
    assert task.score(p, "So the answer is $\\boxed{1999}$.") == 0.0
    assert task.score(p, "I do not know.") == 0.0


def test_math_files_math_rows_with_heldout_file(tmp_path):
    train = _write_jsonl(tmp_path / "train.jsonl", MATH_ROWS + GSM8K_ROWS)
    held = _write_jsonl(tmp_path / "test.jsonl", MATH_ROWS[1:])
    task = load_task("math_files", train_path=train, heldout_path=held)
    assert [p.id for p in task.heldout_prompts()] == ["math:heldout:algebra/1.json"]
    assert len(task.train_prompts()) == 4  # the held-out problem is removed from training
    first = task.train_prompts()[0]
    assert first.text.startswith("Compute $1/2 + 1/4$.\nPlease reason step by step")
    assert first.answer == "\\frac{3}{4}"
    assert task.score(first, "1/2 + 1/4 = 3/4, so \\boxed{0.75}") == 1.0
    assert task.score(first, "\\boxed{\\frac{2}{3}}") == 0.0


def test_math_files_errors(tmp_path):
    with pytest.raises(ValueError, match="train_path"):
        MathFiles()
    with pytest.raises(FileNotFoundError):
        MathFiles(train_path=str(tmp_path / "missing.jsonl")).train_prompts()
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"PAR1")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs pyarrow"):
            read_rows(parquet)
