"""`word_problems`: multi-step arithmetic word problems in plain English, for pretrained LLMs.

A problem follows one person's stock of one kind of item through 2-4 events, each one
arithmetic step, and asks how many are left::

    Maya has 12 apples. She buys 3 bags with 5 apples in each. She gives 7 apples to Leo.
    How many apples does Maya have now?

The policy is asked to reason in short sentences, one step per line, each with its
calculation, and to end with a line `Answer: <number>`::

    Maya buys 3 x 5 = 15 apples.
    Now she has 12 + 15 = 27 apples.
    She gives 7 to Leo, so 27 - 7 = 20 apples are left.
    Answer: 20

Scoring: the number of the last `Answer:` line (without one, the completion's final
expression), checked against the reference with math-verify. Steps are lines: the default
newline segmentation with short-step merging (actors/steps.py). `first_wrong_step`: the
first step that miscalculates (`a op b = c` with the wrong c), or whose stated result (its
last number after an `=`, or the number of an `Answer:` line) is none of the values a right
solution passes through (the start, each event's amount, each running total; for the
answer line, the answer itself), is the first wrong one. When the answer is right, or no step states a wrong result, which step
went wrong cannot be known: None.

Prompts are chat messages (`ChatPrompts`): the process that tokenizes them first hands the
task the model's tokenizer (`use_tokenizer`), and each prompt's text is the problem and
the instructions as the user turn of the tokenizer's chat template, with the assistant turn
opened. A tokenizer without a chat template gets the plain text. Held-out membership is a
function of the problem statement alone (a hash), whatever the template.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from actors.tasks.base import TaskPrompt, chat_text, steps_of
from actors.tasks.chains import generate_splits, is_heldout
from actors.tasks.math_files import verified

INSTRUCTIONS = (
    "Solve the problem step by step. Write each step on its own line as a short sentence "
    'with its calculation, and end with a line of the form "Answer: <number>".'
)
PEOPLE = (
    ("Maya", "She", "her"),
    ("Leo", "He", "his"),
    ("Ava", "She", "her"),
    ("Noah", "He", "his"),
    ("Zoe", "She", "her"),
    ("Omar", "He", "his"),
    ("Lena", "She", "her"),
    ("Ravi", "He", "his"),
    ("Iris", "She", "her"),
    ("Tom", "He", "his"),
)
ITEMS = (
    ("apples", "bags"),
    ("marbles", "jars"),
    ("stickers", "sheets"),
    ("pencils", "boxes"),
    ("cookies", "packs"),
    ("cards", "decks"),
    ("coins", "purses"),
    ("books", "crates"),
    ("shells", "buckets"),
    ("beads", "strings"),
)
EVENTS = ("buy", "packs", "give", "lose", "double", "share")
_ANSWER = re.compile(r"^[\s*#]*answer[\s*]*:[\s*]*(.+)$", re.IGNORECASE | re.MULTILINE)
_RESULT = re.compile(r"=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_EQUATION = re.compile(r"(\d[\d,]*)\s*([-+x×*/÷])\s*(\d[\d,]*)\s*=\s*(-?\d[\d,]*)")
_APPLY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "x": lambda a, b: a * b,
    "×": lambda a, b: a * b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else None,
    "÷": lambda a, b: a / b if b else None,
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One generated problem: its statement and the values a right solution passes through."""

    statement: str
    answer: int
    values: frozenset[int]
    """The start, each event's amount and each running total."""


def generate(rng: random.Random, min_events: int, max_events: int) -> Problem:
    """A problem with `min_events`..`max_events` events, every value a whole number >= 0."""
    name, she, her = rng.choice(PEOPLE)
    items, containers = rng.choice(ITEMS)
    friend = rng.choice([p[0] for p in PEOPLE if p[0] != name])
    value = rng.randint(5, 40)
    values = {value}
    sentences = [f"{name} has {value} {items}."]
    for _ in range(rng.randint(min_events, max_events)):
        kind = rng.choice([e for e in EVENTS if _possible(e, value)])
        if kind == "buy":
            k = rng.randint(2, 20)
            sentences.append(f"{she} buys {k} more {items}.")
            value += k
        elif kind == "packs":
            n, m = rng.randint(2, 6), rng.randint(2, 12)
            sentences.append(f"{she} buys {n} {containers} with {m} {items} in each.")
            values.add(n * m)
            value += n * m
        elif kind == "give":
            k = rng.randint(1, value - 1)
            sentences.append(f"{she} gives {k} {items} to {friend}.")
            value -= k
        elif kind == "lose":
            k = rng.randint(1, min(9, value - 1))
            sentences.append(f"{k} of {her} {items} get lost.")
            value -= k
        elif kind == "double":
            sentences.append(f"Then the number of {her} {items} doubles.")
            value *= 2
        else:  # share
            n = rng.choice([d for d in (2, 3, 4, 5) if value % d == 0])
            sentences.append(
                f"{she} shares them equally among {n} people, {name} included, and keeps "
                f"{her} share."
            )
            value //= n
        values.add(value)
    sentences.append(f"How many {items} does {name} have now?")
    return Problem(" ".join(sentences), value, frozenset(values))


def _possible(kind: str, value: int) -> bool:
    if kind in ("give", "lose"):
        return value >= 2
    if kind == "double":
        return value <= 200
    if kind == "share":
        return any(value % d == 0 for d in (2, 3, 4, 5))
    return True


@dataclass
class WordProblems:
    """The word-problem task; fields are its options (`load_task("word_problems", ...)`)."""

    seed: int = 0
    """Seed of the problem stream; the same seed and options give the same problems."""
    min_events: int = 2
    """Fewest events (arithmetic steps) in a problem."""
    max_events: int = 4
    """Most events in a problem."""
    n_train: int = 20000
    """Number of distinct training problems."""
    n_heldout: int = 500
    """Number of distinct held-out problems."""
    heldout_percent: int = 10
    """Share of the problem space (by statement hash) reserved for held-out problems, in percent."""
    verify_timeout_s: int = 5
    """Per-call time limit of math-verify, in seconds (main thread only)."""
    name: str = "word_problems"
    """Task name."""
    _tokenizer: object = field(default=None, repr=False, compare=False)
    _splits: dict[str, list[TaskPrompt]] = field(default_factory=dict, repr=False, compare=False)
    """The problems' statements, unformatted, by split."""
    _by_id: dict[str, Problem] = field(default_factory=dict, repr=False, compare=False)
    _prompts: dict[str, list[TaskPrompt]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_events <= self.max_events <= 8:
            raise ValueError(
                f"need 1 <= min_events <= max_events <= 8, got {self.min_events}, {self.max_events}"
            )
        if self.n_train < 1 or self.n_heldout < 1 or not 0 < self.heldout_percent < 100:
            raise ValueError("need n_train, n_heldout >= 1 and 0 < heldout_percent < 100")

    def use_tokenizer(self, tokenizer: object) -> None:
        """Format prompts with `tokenizer`'s chat template from now on."""
        self._tokenizer = tokenizer
        self._prompts.clear()

    def train_prompts(self) -> list[TaskPrompt]:
        """Training problems, in a fixed order, as the policy sees them."""
        return self._split("train")

    def heldout_prompts(self) -> list[TaskPrompt]:
        """Held-out problems: no statement is also a training one."""
        return self._split("heldout")

    def score(self, prompt: TaskPrompt, completion: str) -> float:
        """1.0 if the completion's answer equals the reference (math-verify), else 0.0."""
        return float(verified(prompt.answer, answer_text(completion), self.verify_timeout_s))

    def first_wrong_step(self, prompt: TaskPrompt, completion: str) -> int | None:
        """Index into `steps_of(self, completion)` of the first step stating a wrong result."""
        self._generate()
        problem = self._by_id.get(prompt.id)
        if problem is None or self.score(prompt, completion) == 1.0:
            return None
        for k, (a, b) in enumerate(steps_of(self, completion)):
            for line in completion[a:b].splitlines():
                if miscalculates(line):
                    return k
                stated = stated_result(line)
                if stated is None:
                    continue
                right = {problem.answer} if _ANSWER.match(line) else problem.values
                if stated not in right:
                    return k
        return None

    def format(self, statement: str) -> str:
        """The text the policy sees for a problem statement."""
        message = f"{statement}\n\n{INSTRUCTIONS}"
        return chat_text(self._tokenizer, message) or message + "\n"

    def _split(self, split: str) -> list[TaskPrompt]:
        if split not in self._prompts:
            self._prompts[split] = [
                TaskPrompt(p.id, self.format(p.text), p.answer) for p in self._generate()[split]
            ]
        return self._prompts[split]

    def _generate(self) -> dict[str, list[TaskPrompt]]:
        """The problems, drawn and split as the chain tasks draw theirs (`generate_splits`)."""
        if not self._splits:
            drawn: dict[str, Problem] = {}

            def sample(rng: random.Random) -> str:
                problem = generate(rng, self.min_events, self.max_events)
                drawn[problem.statement] = problem
                return problem.statement

            self._splits.update(
                generate_splits(
                    sample,
                    random.Random(self.seed),
                    self.name,
                    self.n_train,
                    self.n_heldout,
                    lambda text: is_heldout(text, self.heldout_percent, b"word-heldout:"),
                    lambda text: str(drawn[text].answer),
                )
            )
            self._by_id.update(
                (p.id, drawn[p.text]) for split in self._splits.values() for p in split
            )
        return self._splits


def answer_text(completion: str) -> str:
    """What the answer is read from: the last `Answer:` line's rest, else the completion."""
    found = _ANSWER.findall(completion)
    return found[-1] if found else completion


def miscalculates(line: str) -> bool:
    """Whether a line states a calculation `a op b = c` whose result is wrong."""
    for a, op, b, c in _EQUATION.findall(line):
        a, b, c = (int(x.replace(",", "")) for x in (a, b, c))
        if _APPLY[op](a, b) != c:
            return True
    return False


def stated_result(line: str) -> int | None:
    """The result a line states: the number of an `Answer:` line, or the last number after
    an `=`; None when it states none (or a number that is not whole)."""
    answer = _ANSWER.match(line)
    found = _NUMBER.findall(answer.group(1)) if answer else _RESULT.findall(line)
    if not found:
        return None
    text = found[0 if answer else -1].replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None
