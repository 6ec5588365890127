"""The task plugin interface: prompts, a verifier, and optionally step-level ground truth.

A task is any class that satisfies `Task`; config names it as `"module:Class"` (or a short
built-in name) and `load_task` builds it with keyword options from the config. Two optional
capabilities are separate protocols so a task only implements what it can:
- `StepSplitter.split_steps(text)`: the task's own step segmentation (actors/steps.py);
- `StepChecker.first_wrong_step(prompt, completion)`: the index of the first wrong step in
  the segmentation that `steps_of` computes, so critical-step choices can be measured;
- `ChatPrompts.use_tokenizer(tokenizer)`: a task whose prompts go through the model's chat
  template; whoever turns its prompts into tokens hands it the tokenizer first
  (`with_tokenizer`).

Invariants: `score` returns a float in [0, 1]; `train_prompts()` and `heldout_prompts()` are
deterministic for the same options and share no prompt id or text.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from actors.steps import Span, StepConfig, segment_text

BUILTIN_TASKS = {
    "arithmetic": "actors.tasks.arithmetic:Arithmetic",
    "math_files": "actors.tasks.math_files:MathFiles",
    "pivot": "actors.tasks.pivot:Pivot",
    "word_problems": "actors.tasks.word_problems:WordProblems",
}
"""Short names accepted by `load_task` in place of a `module:Class` spec."""


@dataclass(frozen=True, slots=True)
class TaskPrompt:
    """One problem of a task."""

    id: str
    """Stable identifier, unique within the task (`<task>:<split>:<key>`)."""
    text: str
    """The prompt exactly as the policy sees it (already formatted)."""
    answer: str
    """The reference final answer, in the task's canonical form."""


@runtime_checkable
class Task(Protocol):
    """What every task provides."""

    name: str
    """Short task name, used in metrics labels and message fields."""

    def train_prompts(self) -> Sequence[TaskPrompt]:
        """Prompts to train on, in a fixed order."""
        ...

    def heldout_prompts(self) -> Sequence[TaskPrompt]:
        """Prompts to evaluate on; disjoint from the training prompts."""
        ...

    def score(self, prompt: TaskPrompt, completion: str) -> float:
        """The outcome reward of `completion` for `prompt`, in [0, 1]."""
        ...


@runtime_checkable
class StepSplitter(Protocol):
    """A task that defines its own reasoning steps."""

    def split_steps(self, text: str) -> list[Span]:
        """Character spans of the steps of `text` (see actors.steps.Splitter)."""
        ...


@runtime_checkable
class StepChecker(Protocol):
    """A task that knows which step of a completion first goes wrong."""

    def first_wrong_step(self, prompt: TaskPrompt, completion: str) -> int | None:
        """Index into `steps_of(task, completion)` of the first wrong step; None if none."""
        ...


@runtime_checkable
class ChatPrompts(Protocol):
    """A task whose prompts are chat messages, formatted with the model's chat template."""

    def use_tokenizer(self, tokenizer: object) -> None:
        """Format prompts with this tokenizer's chat template from now on."""
        ...


def with_tokenizer(task: Task, tokenizer: object) -> Task:
    """`task`, told the model's tokenizer if its prompts go through a chat template."""
    if isinstance(task, ChatPrompts):
        task.use_tokenizer(tokenizer)
    return task


def chat_text(tokenizer: object | None, message: str) -> str | None:
    """`message` as the user turn of `tokenizer`'s chat template, the assistant turn opened;
    None when there is no tokenizer or it has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer.apply_chat_template(  # type: ignore[union-attr]
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


def steps_of(task: object, text: str, config: StepConfig | None = None) -> list[Span]:
    """Character spans of the steps of `text` under `task`'s splitter, if it has one."""
    splitter = task.split_steps if isinstance(task, StepSplitter) else None
    return segment_text(text, config or StepConfig(), splitter)


def load_task(spec: str, **options: object) -> Task:
    """Build the task named by `spec` (`"package.module:Class"` or a built-in short name).

    `options` are passed to the class as keyword arguments. Raises ValueError with the reason
    for a malformed spec, a module that does not import, a missing class, options the class
    rejects, or an object that does not satisfy `Task`.
    """
    target = BUILTIN_TASKS.get(spec, spec)
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name or ":" in class_name:
        raise ValueError(
            f"bad task spec {spec!r}: expected 'package.module:Class' "
            f"or one of {sorted(BUILTIN_TASKS)}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"bad task spec {spec!r}: cannot import {module_name!r}: {e}") from e
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"bad task spec {spec!r}: module {module_name!r} has no {class_name!r}")
    try:
        task = cls(**options)
    except TypeError as e:
        raise ValueError(f"task {spec!r} rejected options {sorted(options)}: {e}") from e
    if not isinstance(task, Task):
        raise ValueError(
            f"task {spec!r} does not implement the Task protocol "
            "(name, train_prompts, heldout_prompts, score)"
        )
    return task
