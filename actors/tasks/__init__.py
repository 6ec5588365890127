"""Tasks: prompts, verifiers and step ground truth behind one plugin interface (base.py)."""

from actors.tasks.base import (
    BUILTIN_TASKS,
    StepChecker,
    StepSplitter,
    Task,
    TaskPrompt,
    load_task,
    steps_of,
)

__all__ = [
    "BUILTIN_TASKS",
    "StepChecker",
    "StepSplitter",
    "Task",
    "TaskPrompt",
    "load_task",
    "steps_of",
]
