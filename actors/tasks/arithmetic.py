"""A synthetic multi-step arithmetic task whose every step can be checked.

A problem is a chain of additions and subtractions evaluated left to right. The solution
writes one partial result per line and ends with the answer line::

    prompt:      "Q: 23+45-12+7\\n"
    completion:  "23+45=68\\n68-12=56\\n56+7=63\\nA: 63"

Each line is one reasoning step (the task supplies its own splitter: lines are shorter than
the default `min_step_chars`), so the first wrong step of any completion is known exactly:
the first line that differs from the canonical line. Running values stay in
`[0, max_value]`, so a tiny character-level model can learn the format; `min_ops`,
`max_ops` and `max_operand` set the difficulty.

Held-out membership is a function of the problem text alone (a hash), so the held-out and
training sets are disjoint for every seed and size, and both are deterministic.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from actors.steps import Span, regex_splitter
from actors.tasks import chains
from actors.tasks.base import TaskPrompt
from actors.tasks.chains import answer_line_score, first_wrong_line, generate_splits

ALPHABET = "0123456789+-=:AQ \n"
"""Every character that prompts and canonical solutions of this task use."""

_PROMPT = re.compile(r"^Q: (\d+(?:[+-]\d+)+)\n$")
_TERM = re.compile(r"([+-])(\d+)")
_split_lines = regex_splitter(r"\n")


@dataclass
class Arithmetic:
    """The arithmetic task; fields are its options (`load_task("arithmetic", n_train=...)`)."""

    seed: int = 0
    """Seed of the problem stream; the same seed and options give the same prompts."""
    min_ops: int = 2
    """Fewest operations (solution lines before the answer line) in a problem."""
    max_ops: int = 4
    """Most operations in a problem; at most 23 so every line stays its own step."""
    max_operand: int = 50
    """Operands are drawn from [1, max_operand]."""
    max_value: int = 99
    """Every running value stays in [0, max_value]."""
    n_train: int = 20000
    """Number of distinct training prompts."""
    n_heldout: int = 500
    """Number of distinct held-out prompts."""
    heldout_percent: int = 10
    """Share of the problem space (by text hash) reserved for held-out prompts, in percent."""
    name: str = "arithmetic"
    """Task name."""
    _cache: dict[str, list[TaskPrompt]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_ops <= self.max_ops <= 23:
            raise ValueError(
                f"need 1 <= min_ops <= max_ops <= 23, got {self.min_ops}, {self.max_ops}"
            )
        if not 1 <= self.max_operand <= self.max_value:
            raise ValueError("need 1 <= max_operand <= max_value")
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
        """Index of the first line that differs from the canonical solution (spaces ignored).

        Indices are those of `steps_of(self, completion)` (one step per line, capped at the
        default `max_steps`). A completion that stops early with every line right is wrong at
        its last step (the step that ended it); a canonical completion has no wrong step
        (None). Lines after the answer line are not judged.
        """
        return first_wrong_line(self, solution(prompt.text), completion)

    # --- problems ------------------------------------------------------------------------

    def sample_problem(self, rng: random.Random) -> str:
        """One prompt text drawn from the problem distribution."""
        n_ops = rng.randint(self.min_ops, self.max_ops)
        value = rng.randint(1, self.max_operand)
        text = str(value)
        for _ in range(n_ops):
            ops = []
            if value + 1 <= self.max_value:
                ops.append("+")
            if value >= 1:
                ops.append("-")
            op = rng.choice(ops)
            room = self.max_value - value if op == "+" else value
            operand = rng.randint(1, min(self.max_operand, room))
            value = value + operand if op == "+" else value - operand
            text += f"{op}{operand}"
        return f"Q: {text}\n"

    def _split(self, split: str) -> list[TaskPrompt]:
        if not self._cache:
            self._cache.update(self._generate())
        return self._cache[split]

    def _generate(self) -> dict[str, list[TaskPrompt]]:
        rng = random.Random(f"arithmetic:{self.seed}")
        return generate_splits(
            self.sample_problem,
            rng,
            self.name,
            self.n_train,
            self.n_heldout,
            lambda text: is_heldout(text, self.heldout_percent),
            answer,
        )


def is_heldout(prompt_text: str, percent: int) -> bool:
    """Whether a problem belongs to the held-out share (a property of its text only)."""
    return chains.is_heldout(prompt_text, percent, b"arithmetic-heldout:")


def parse_problem(prompt_text: str) -> tuple[int, list[tuple[str, int]]]:
    """The first operand and the (operator, operand) chain of a prompt."""
    match = _PROMPT.match(prompt_text)
    if match is None:
        raise ValueError(f"not an arithmetic prompt: {prompt_text!r}")
    expr = match.group(1)
    first = re.match(r"\d+", expr)
    assert first is not None
    terms = [(op, int(n)) for op, n in _TERM.findall(expr[first.end() :])]
    return int(first.group()), terms


def solution(prompt_text: str) -> str:
    """The canonical completion: one `a<op>b=c` line per operation, then `A: <answer>`."""
    value, terms = parse_problem(prompt_text)
    lines = []
    for op, operand in terms:
        new = value + operand if op == "+" else value - operand
        lines.append(f"{value}{op}{operand}={new}")
        value = new
    return "\n".join([*lines, f"A: {value}"])


def answer(prompt_text: str) -> str:
    """The final value of a problem, as text."""
    return solution(prompt_text).rsplit("A: ", 1)[1]
