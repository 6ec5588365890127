"""What the line-per-step chain tasks (`arithmetic`, `pivot`) share: the answer line, the
first wrong line, and the deterministic train / held-out split by text hash.

A chain task's prompt is `Q: <chain>\\n`; its canonical completion writes one line per
operation and ends with `A: <answer>`. These functions take the task's own `solution`
(prompt text -> canonical completion) and problem sampler, so each task file holds only
what makes it that task.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from actors.tasks.base import TaskPrompt, steps_of


def answer_line_score(prompt: TaskPrompt, completion: str) -> float:
    """1.0 if the first `A:` line of the completion states the reference answer, else 0.0."""
    for line in completion.split("\n"):
        if line.startswith("A:"):
            return float(line[2:].strip() == prompt.answer)
    return 0.0


def first_wrong_line(task: object, expected: str, completion: str) -> int | None:
    """Index of the first line of `completion` that differs from the canonical `expected`
    (spaces ignored). Indices are those of `steps_of(task, completion)`. A completion that
    stops early with every line right is wrong at its last step (the step that ended it); a
    canonical completion has none (None). Lines after the answer line are not judged."""
    lines = expected.split("\n")
    got = [completion[a:b].rstrip("\n") for a, b in steps_of(task, completion)]
    for k, want in enumerate(lines):
        if k == len(got):
            return k - 1 if got else None
        if got[k].replace(" ", "") != want.replace(" ", ""):
            return k
    return None


def is_heldout(prompt_text: str, percent: int, salt: bytes) -> bool:
    """Whether a problem belongs to the held-out share: a property of its text alone."""
    digest = hashlib.sha256(salt + prompt_text.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def generate_splits(
    sample: Callable[[random.Random], str],
    rng: random.Random,
    name: str,
    n_train: int,
    n_heldout: int,
    heldout: Callable[[str], bool],
    answer: Callable[[str], str],
) -> dict[str, list[TaskPrompt]]:
    """`n_train` and `n_heldout` distinct problems drawn by `sample` from `rng`, split by
    `heldout(text)`, in stream order; ids `<name>:<split>:<text hash>`. Raises ValueError
    when the problem space is too small to fill both."""
    wanted = {"train": n_train, "heldout": n_heldout}
    out: dict[str, list[TaskPrompt]] = {"train": [], "heldout": []}
    seen: set[str] = set()
    misses = 0
    while any(len(out[s]) < wanted[s] for s in out):
        text = sample(rng)
        split = "heldout" if heldout(text) else "train"
        if text in seen or len(out[split]) >= wanted[split]:
            misses += 1
            if misses > 100 * (n_train + n_heldout) + 10_000:
                raise ValueError("problem space too small for n_train + n_heldout")
            continue
        seen.add(text)
        key = hashlib.sha256(text.encode()).hexdigest()[:12]
        out[split].append(TaskPrompt(f"{name}:{split}:{key}", text, answer(text)))
    return out
