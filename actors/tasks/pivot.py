"""`pivot`: long chains where every step is easy but one, which decides the outcome.

A problem is a chain of operations on a running value in [0, 99], evaluated left to right.
Every step but one adds or subtracts a single digit without carry or borrow (only the units
digit changes); one step, the *pivot*, multiplies by a factor and keeps the last two digits
(`*` means "times, mod 100"), which needs a carry through both digits. The solution writes
one line per step and ends with the answer line::

    prompt:      "Q: 23+4-2*7+1-3+5+2-6\\n"
    completion:  "23+4=27\\n27-2=25\\n25*7=75\\n75+1=76\\n...\\nA: 75"

A model that has learned the format gets the easy steps right almost always and the pivot
often wrong, so its failures sit at one known step: the setting where a critical-step method
can beat a group baseline (GPO.md, "When GPO can help"). The knobs:
- chain length: `min_steps`..`max_steps` operations (8-16);
- pivot difficulty: the factor has `pivot_digits` digits (1: 2-9; 2: 11-99, not a multiple
  of 10);
- pivot position: `early`, `middle` or `late` third of the chain, or `random`.

Every step is checkable (`first_wrong_step`, `pivot_step`), and the characters are those of
the arithmetic task plus `*` (`ALPHABET`, for a character-level policy). Held-out
membership is a function of the problem text alone (a hash), as in the arithmetic task.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Literal

from actors.steps import Span, regex_splitter
from actors.tasks import chains
from actors.tasks.base import TaskPrompt
from actors.tasks.chains import answer_line_score, first_wrong_line, generate_splits

ALPHABET = "0123456789+-*=:AQ \n"
"""Every character that prompts and canonical solutions of this task use."""

Position = Literal["early", "middle", "late", "random"]

_PROMPT = re.compile(r"^Q: (\d+(?:[+*-]\d+)+)\n$")
_TERM = re.compile(r"([+*-])(\d+)")
_split_lines = regex_splitter(r"\n")


@dataclass
class Pivot:
    """The pivot task; fields are its options (`load_task("pivot", min_steps=12, ...)`)."""

    seed: int = 0
    """Seed of the problem stream; the same seed and options give the same prompts."""
    min_steps: int = 8
    """Fewest operations (solution lines before the answer line) in a problem."""
    max_steps: int = 12
    """Most operations in a problem; at most 23 so every line stays its own step."""
    pivot_digits: int = 1
    """Digits of the pivot's factor: 1 (2-9) or 2 (11-99, no multiple of 10)."""
    pivot_position: Position = "random"
    """Where the pivot step lies: `early`, `middle` or `late` third of the chain, or anywhere."""
    n_train: int = 20000
    """Number of distinct training prompts."""
    n_heldout: int = 500
    """Number of distinct held-out prompts."""
    heldout_percent: int = 10
    """Share of the problem space (by text hash) reserved for held-out prompts, in percent."""
    name: str = "pivot"
    """Task name."""
    _cache: dict[str, list[TaskPrompt]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 2 <= self.min_steps <= self.max_steps <= 23:
            raise ValueError(
                f"need 2 <= min_steps <= max_steps <= 23, got {self.min_steps}, {self.max_steps}"
            )
        if self.pivot_digits not in (1, 2):
            raise ValueError(f"pivot_digits must be 1 or 2, got {self.pivot_digits}")
        if self.pivot_position not in ("early", "middle", "late", "random"):
            raise ValueError(
                f"pivot_position must be early, middle, late or random, got {self.pivot_position!r}"
            )
        if not 0 < self.heldout_percent < 100:
            raise ValueError("heldout_percent must lie in (0, 100)")

    # --- Task protocol ------------------------------------------------------------------

    def train_prompts(self) -> list[TaskPrompt]:
        """`n_train` distinct problems outside the held-out share, in stream order."""
        return self._split("train")

    def heldout_prompts(self) -> list[TaskPrompt]:
        """`n_heldout` distinct problems inside the held-out share, in stream order."""
        return self._split("heldout")

    def score(self, prompt: TaskPrompt, completion: str) -> float:
        """1.0 if the first `A:` line of the completion states the reference answer, else 0.0."""
        return answer_line_score(prompt, completion)

    def split_steps(self, text: str) -> list[Span]:
        """One step per line; the newline stays with its line."""
        return _split_lines(text)

    def first_wrong_step(self, prompt: TaskPrompt, completion: str) -> int | None:
        """Index of the first line that differs from the canonical solution (spaces ignored);
        a completion that stops early with every line right is wrong at its last step, and a
        canonical one has none (None). Indices are those of `steps_of(self, completion)`."""
        return first_wrong_line(self, solution(prompt.text), completion)

    def pivot_step(self, prompt: TaskPrompt) -> int:
        """Index of the pivot line in the canonical solution (and so in the steps of any
        completion that follows the format)."""
        return pivot_index(prompt.text)

    # --- problems ------------------------------------------------------------------------

    def sample_problem(self, rng: random.Random) -> str:
        """One prompt text drawn from the problem distribution."""
        n = rng.randint(self.min_steps, self.max_steps)
        pivot = pivot_slot(n, self.pivot_position, rng)
        value = rng.randint(10, 99)
        text = str(value)
        for i in range(n):
            if i == pivot:
                factor = pivot_factor(self.pivot_digits, rng)
                value = value * factor % 100
                text += f"*{factor}"
                continue
            units = value % 10
            ops = [op for op, ok in (("+", units < 9), ("-", units > 0)) if ok]
            op = rng.choice(ops)
            room = 9 - units if op == "+" else units
            d = rng.randint(1, room)
            value = value + d if op == "+" else value - d
            text += f"{op}{d}"
        return f"Q: {text}\n"

    def _split(self, split: str) -> list[TaskPrompt]:
        if not self._cache:
            self._cache.update(self._generate())
        return self._cache[split]

    def _generate(self) -> dict[str, list[TaskPrompt]]:
        rng = random.Random(
            f"pivot:{self.seed}:{self.min_steps}:{self.max_steps}:{self.pivot_digits}:"
            f"{self.pivot_position}"
        )
        return generate_splits(
            self.sample_problem,
            rng,
            self.name,
            self.n_train,
            self.n_heldout,
            lambda text: is_heldout(text, self.heldout_percent),
            answer,
        )


def pivot_slot(n: int, position: Position, rng: random.Random) -> int:
    """The pivot's index among `n` steps: a uniform draw within the named third."""
    thirds = {"early": (0, n // 3), "middle": (n // 3, 2 * n // 3), "late": (2 * n // 3, n)}
    lo, hi = thirds.get(position, (0, n))
    return rng.randrange(lo, max(hi, lo + 1))


def pivot_factor(digits: int, rng: random.Random) -> int:
    """A factor of `digits` digits: 2-9, or 11-99 without the multiples of 10."""
    if digits == 1:
        return rng.randint(2, 9)
    return rng.choice([f for f in range(11, 100) if f % 10])


def is_heldout(prompt_text: str, percent: int) -> bool:
    """Whether a problem belongs to the held-out share (a property of its text only)."""
    return chains.is_heldout(prompt_text, percent, b"pivot-heldout:")


def parse_problem(prompt_text: str) -> tuple[int, list[tuple[str, int]]]:
    """The first operand and the (operator, operand) chain of a prompt."""
    match = _PROMPT.match(prompt_text)
    if match is None:
        raise ValueError(f"not a pivot prompt: {prompt_text!r}")
    expr = match.group(1)
    first = re.match(r"\d+", expr)
    assert first is not None
    return int(first.group()), [(op, int(n)) for op, n in _TERM.findall(expr[first.end() :])]


def solution(prompt_text: str) -> str:
    """The canonical completion: one `a<op>b=c` line per operation, then `A: <answer>`."""
    value, terms = parse_problem(prompt_text)
    lines = []
    for op, operand in terms:
        new = {"+": value + operand, "-": value - operand, "*": value * operand % 100}[op]
        lines.append(f"{value}{op}{operand}={new}")
        value = new
    return "\n".join([*lines, f"A: {value}"])


def answer(prompt_text: str) -> str:
    """The final value of a problem, as text."""
    return solution(prompt_text).rsplit("A: ", 1)[1]


def pivot_index(prompt_text: str) -> int:
    """Index of the `*` step of a prompt's chain."""
    _, terms = parse_problem(prompt_text)
    return next(i for i, (op, _) in enumerate(terms) if op == "*")


def step_accuracy(task: Pivot, prompts: list[TaskPrompt], completions: list[str]) -> dict:
    """How often each kind of step is right when it is reached, over completions.

    A step is reached when every step before it was right; it is then right or wrong.
    Steps after the first wrong one start from a wrong running value and are not judged.
    Returns counts and rates for the pivot and the easy steps: `easy_right`, `easy_total`,
    `pivot_right`, `pivot_total`, `easy_rate`, `pivot_rate` (NaN when none was reached)."""
    easy = [0, 0]
    piv = [0, 0]
    for prompt, text in zip(prompts, completions, strict=True):
        wrong = task.first_wrong_step(prompt, text)
        pivot = task.pivot_step(prompt)
        n_ops = len(solution(prompt.text).split("\n")) - 1
        last = n_ops - 1 if wrong is None else min(wrong, n_ops - 1)
        for k in range(last + 1):
            right = wrong is None or k < wrong
            bucket = piv if k == pivot else easy
            bucket[0] += right
            bucket[1] += 1
    return {
        "easy_right": easy[0],
        "easy_total": easy[1],
        "pivot_right": piv[0],
        "pivot_total": piv[1],
        "easy_rate": easy[0] / easy[1] if easy[1] else float("nan"),
        "pivot_rate": piv[0] / piv[1] if piv[1] else float("nan"),
    }
