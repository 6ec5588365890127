"""The generation work of actors and estimators, replayed in one process without Redis.

What `gpo-actor` and `gpo-estimator` generate for a set of prompts, in the order and batch
shapes they use: the actor's rollouts (`batch_messages` prompts per `generate` call), the
estimator's MC searches of the fresh trajectories (`find_critical_steps` over
`estimator.batch_messages` trajectories at a time in stream order, each seeded from its
trajectory id as `actors.estimator.estimate_batch` seeds it; one `generate` call per round
of a batch), and the reset rollouts from each critical-step prefix (`batch_messages` reset
requests per call). One estimator reads the stream; the reset rollouts, which share its
batches in the system, are left out of them here (they need no MC). Every `generate` call goes
through `Metered`, which adds its wall time and output to a `Cost`. `gpo bench gpo-overhead`
is built on it; any object with the `Engine` interface works (tests use `ScriptedEngine`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from actors.engines.base import Engine, GenerationRequest, GenerationResult
from actors.estimator import EstimatorConfig
from actors.mc_config import McConfig
from actors.mc_search import Decode, StepTrajectory, find_critical_steps
from actors.rollout import RolloutConfig, seed_for
from actors.samples import answerable, is_target
from learner.composition import batch_targets
from learner.config import LearnerConfig
from protocol.config import apply_sets, from_mapping, load_toml
from protocol.run import expand_run


@dataclass(frozen=True, slots=True)
class Workload:
    """Prompts and the task functions the actor and estimator apply to completions."""

    prompts: list[tuple[list[int], object]]
    """Per prompt: its token ids, and what `score` takes as the prompt."""
    score: Callable[[object, str], float]
    """The verifier: reward of a completion text (kept steps plus new text)."""
    decode: Decode
    """Token ids -> text."""
    spans: Callable[[list[int]], list[tuple[int, int]]]
    """Completion token ids -> step spans (the actor's segmentation)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """The parts of a run config that set the generation work."""

    rollout: RolloutConfig
    """Rollouts per prompt and sampling (`[actor.rollout]`; the estimator's is the same)."""
    batch_messages: int
    """Prompts or reset requests per actor `generate` call."""
    mc: McConfig
    """The estimator's MC search (`[estimator.mc]`)."""
    n_reset: int
    """Reset rollouts per critical step."""
    estimator_batch: int = 8
    """Trajectories per estimator batch (`estimator.batch_messages`)."""
    resets_per_fresh: float = math.inf
    """Most reset samples the learner's batches train per fresh sample (`[learner]`
    batch_mode and reset_fraction: 1 for a share of 0.5); the rest are dropped as surplus."""
    reuse: bool = False
    """`[estimator] reuse_mc_rollouts`: resets answered from the continuations at s_m."""


@dataclass(slots=True)
class Cost:
    """What a phase spent in `generate`."""

    seconds: float = 0.0
    calls: int = 0
    completions: int = 0
    tokens: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.seconds + other.seconds,
            self.calls + other.calls,
            self.completions + other.completions,
            self.tokens + other.tokens,
        )


class Metered:
    """An `Engine` that adds every `generate` call's wall time and output to `cost`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.cost = Cost()

    @property
    def policy_version(self) -> int:
        return self.engine.policy_version

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        start = time.perf_counter()
        results = await self.engine.generate(requests)
        self.cost.seconds += time.perf_counter() - start
        self.cost.calls += 1
        for r in results:
            self.cost.completions += len(r.completions)
            self.cost.tokens += sum(len(c.token_ids) for c in r.completions)
        return results

    async def load_adapter(
        self, version: int, config: dict, safetensors_bytes: bytes | bytearray
    ) -> None:
        await self.engine.load_adapter(version, config, safetensors_bytes)

    async def close(self) -> None:
        await self.engine.close()


@dataclass(frozen=True, slots=True)
class Rollout:
    """One fresh trajectory, as the estimator receives it."""

    id: str
    prompt: int
    """Index into `Workload.prompts`."""
    completion: list[int]
    spans: list[tuple[int, int]]
    reward: float
    logprobs: list[float] = field(default_factory=list)
    """Behaviour logprob per completion token (screening reads them)."""


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def actor_rollouts(
    engine: Engine, work: Workload, shape: Shape, tag: str
) -> tuple[list[Rollout], Cost]:
    """PPO's work, and GPO's first phase: `n` rollouts per prompt, in actor-sized batches."""
    meter, out = Metered(engine), []
    ids = [f"train:{tag}:{i}" for i in range(len(work.prompts))]
    for batch in _chunks(list(range(len(work.prompts))), shape.batch_messages):
        requests = [
            GenerationRequest(
                work.prompts[i][0],
                shape.rollout.n,
                shape.rollout.sampling(seed_for(ids[i], shape.rollout.seed)),
            )
            for i in batch
        ]
        for i, result in zip(batch, await meter.generate(requests), strict=True):
            for j, c in enumerate(result.completions):
                reward = work.score(work.prompts[i][1], work.decode(c.token_ids))
                spans = work.spans(c.token_ids)
                out.append(
                    Rollout(f"{ids[i]}/{j}", i, c.token_ids, spans, reward, list(c.logprobs))
                )
    return out, meter.cost


@dataclass(frozen=True, slots=True)
class EstimatorPass:
    """What the estimators did with a set of rollouts."""

    resets: list[tuple[str, list[int]]]
    """Reset requests for the actors: (id, prefix s_m)."""
    cost: Cost
    """The MC searches' generation."""
    searched: int
    """Trajectories searched."""
    answered: int = 0
    """Resets answered from the searches' own continuations (`reuse_mc_rollouts`)."""
    reused: int = 0
    """Continuations those answers reuse as reset rollouts."""


async def estimator_pass(
    engine: Engine,
    work: Workload,
    mc: McConfig,
    shape: Shape,
    rollouts: list[Rollout],
    batch: int | None = None,
    reuse: bool = False,
) -> EstimatorPass:
    """The MC search of every fresh trajectory, `batch` trajectories (default
    `shape.estimator_batch`) at a time in stream order, as `gpo-estimator` reads them. With
    `reuse` (`[estimator] reuse_mc_rollouts`) a reset is answered from its search's first
    `n_reset` continuations at s_m as `gpo-estimator` does (with `share_states`, once per
    state and batch)."""
    meter, resets, answered, reused = Metered(engine), [], 0, 0
    # an empty completion has no step to search; `mc.targets` may leave successes out
    searchable = [
        r for r in rollouts if r.spans and is_target(r.id, r.reward, mc, shape.rollout.seed)
    ]
    for group in _chunks(searchable, batch or shape.estimator_batch):
        subjects, configs = [], []
        for r in group:
            seed = seed_for(r.id, shape.rollout.seed)
            configs.append(replace(mc, sampling=shape.rollout.sampling(seed), seed=seed))
            prompt_ids, prompt = work.prompts[r.prompt]
            subjects.append(
                StepTrajectory(prompt_ids, r.completion, r.spans, r.reward, prompt, r.logprobs)
            )
        results = await find_critical_steps(meter, work, subjects, configs, decode=work.decode)
        due = []  # (rollout, result, s_m) of every reset request the batch makes
        for r, result in zip(group, results, strict=True):
            if result.critical_step is not None and mc.selection != "none":
                start = r.spans[result.critical_step][0]
                due.append((r, result, list(work.prompts[r.prompt][0]) + r.completion[:start]))
        # with `reuse`, answered as gpo-estimator answers them (`answerable`)
        have = [i for i, (_, result, _) in enumerate(due) if reuse and result.critical_completions]
        ok = dict(zip(have, answerable([tuple(due[i][2]) for i in have], mc.share_states)))
        for i, (r, result, prefix) in enumerate(due):
            if ok.get(i):
                answered += 1
                reused += len(result.critical_completions[: shape.n_reset])
            else:
                resets.append((f"reset:{r.id}", prefix))
    return EstimatorPass(resets, meter.cost, len(searchable), answered, reused)


def duplicate_states(work: Workload, rollouts: list[Rollout]) -> tuple[int, int]:
    """(boundaries searched, distinct states among them within each prompt's group): states
    s_i that several rollouts of one prompt share (s_0 always) have one value, so MC
    continuations spent on the duplicates could be pooled."""
    total, distinct = 0, 0
    by_prompt: dict[int, set[tuple[int, ...]]] = {}
    for r in rollouts:
        states = by_prompt.setdefault(r.prompt, set())
        for start, _ in r.spans:
            states.add(tuple(work.prompts[r.prompt][0]) + tuple(r.completion[:start]))
            total += 1
    distinct = sum(len(s) for s in by_prompt.values())
    return total, distinct


async def reset_rollouts(engine: Engine, resets: list[tuple[str, list[int]]], shape: Shape) -> Cost:
    """The actor serving reset requests: `n_reset` rollouts from each prefix, batched."""
    meter = Metered(engine)
    for batch in _chunks(resets, shape.batch_messages):
        await meter.generate(
            [
                GenerationRequest(
                    prefix, shape.n_reset, shape.rollout.sampling(seed_for(rid, shape.rollout.seed))
                )
                for rid, prefix in batch
            ]
        )
    return meter.cost


def shape_from_config(path: str | Path, sets: Sequence[str] = ()) -> Shape:
    """The generation shape of a run config (the sections actors and estimators read), with
    `--set SECTION.KEY=VALUE` overrides."""
    data = expand_run(apply_sets(load_toml(path), list(sets)))
    actor, estimator = data.get("actor", {}), data.get("estimator", {})
    learner = from_mapping(LearnerConfig, data.get("learner", {}), "learner")
    est = from_mapping(EstimatorConfig, estimator, "estimator")
    fresh, resets = batch_targets(learner.batch_mode, learner.batch_size, learner.reset_fraction)
    return Shape(
        rollout=from_mapping(RolloutConfig, actor.get("rollout", {}), "actor.rollout"),
        batch_messages=int(actor.get("batch_messages", 8)),
        mc=est.mc,
        n_reset=est.n_reset,
        reuse=est.reuse_mc_rollouts,
        estimator_batch=est.batch_messages,
        resets_per_fresh=resets / fresh if fresh else math.inf,
    )


def arithmetic_workload(tokenizer, task, count: int) -> Workload:
    """The first `count` training prompts of the arithmetic task, as the actor sees them."""
    from actors.steps import StepConfig, token_spans
    from actors.tasks.base import StepSplitter

    splitter = task.split_steps if isinstance(task, StepSplitter) else None
    prompts = [(list(tokenizer(p.text)["input_ids"]), p) for p in task.train_prompts()[:count]]
    return Workload(
        prompts=prompts,
        score=task.score,
        decode=functools.partial(tokenizer.decode, skip_special_tokens=True),
        spans=lambda ids: token_spans(ids, tokenizer, StepConfig(), splitter),
    )
