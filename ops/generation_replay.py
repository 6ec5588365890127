"""The generation work of actors and estimators, replayed in one process without Redis.

What `gpo-actor` and `gpo-estimator` generate for a set of prompts, in the order and batch
shapes they use: the actor's rollouts (`batch_messages` prompts per `generate` call), the
estimator's MC search of each fresh trajectory (`find_critical_step`, seeded from the
trajectory id as `actors.estimator.estimate` seeds it), and the reset rollouts from each
critical-step prefix (`batch_messages` reset requests per call). Every `generate` call goes
through `Metered`, which adds its wall time and output to a `Cost`. `gpo bench gpo-overhead`
is built on it; any object with the `Engine` interface works (tests use `ScriptedEngine`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from actors.engines.base import Engine, GenerationRequest, GenerationResult
from actors.mc_search import Decode, McConfig, StepTrajectory, find_critical_step
from actors.rollout import RolloutConfig, seed_for
from protocol.config import from_mapping, load_toml


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

    async def load_adapter(self, version: int, config: dict, safetensors_bytes: bytes) -> None:
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
                out.append(
                    Rollout(f"{ids[i]}/{j}", i, c.token_ids, work.spans(c.token_ids), reward)
                )
    return out, meter.cost


async def estimator_pass(
    engine: Engine,
    work: Workload,
    mc: McConfig,
    shape: Shape,
    rollouts: list[Rollout],
    per_call: str = "trajectory",
) -> tuple[list[tuple[str, list[int]]], Cost, int]:
    """The MC search of every fresh trajectory; returns the reset requests (id, prefix s_m),
    the cost and the number of trajectories searched.

    `per_call="trajectory"`: one search at a time, as `gpo-estimator` runs them (each round of
    a search is one `generate` call). `"prompt"`: the searches of one prompt's rollouts run
    together and every round's requests of all of them go out as one call (`Coalescer`)."""
    meter, resets = Metered(engine), []
    searchable = [r for r in rollouts if r.spans]  # an empty completion has no step to search
    if per_call == "trajectory":
        groups = [[r] for r in searchable]
    elif per_call == "prompt":
        by_prompt: dict[int, list[Rollout]] = {}
        for r in searchable:
            by_prompt.setdefault(r.prompt, []).append(r)
        groups = list(by_prompt.values())
    else:
        raise ValueError(f"unknown per_call {per_call!r}")
    for group in groups:
        front = Coalescer(meter, len(group))
        results = await asyncio.gather(*(_search(front, work, mc, shape, r) for r in group))
        for r, result in zip(group, results, strict=True):
            if result.critical_step is not None and mc.selection != "none":
                start = r.spans[result.critical_step][0]
                resets.append(
                    (f"reset:{r.id}", list(work.prompts[r.prompt][0]) + r.completion[:start])
                )
    return resets, meter.cost, len(searchable)


async def _search(front: Coalescer, work: Workload, mc: McConfig, shape: Shape, r: Rollout):
    """One trajectory's search, seeded from its id as `actors.estimator.estimate` seeds it."""
    seed = seed_for(r.id, shape.rollout.seed)
    cfg = replace(mc, sampling=shape.rollout.sampling(seed), seed=seed)
    prompt_ids, prompt = work.prompts[r.prompt]
    subject = StepTrajectory(prompt_ids, r.completion, r.spans, r.reward, prompt)
    try:
        return await find_critical_step(front, work, subject, cfg, decode=work.decode)
    finally:
        await front.leave()


class Coalescer:
    """Engine front for `callers` concurrent searches: holds each `generate` call until every
    search still running has made one, then sends all their requests as one call. With one
    caller it passes calls straight through."""

    def __init__(self, engine: Engine, callers: int):
        self.engine, self.active = engine, callers
        self.pending: list[tuple[list[GenerationRequest], asyncio.Future]] = []

    @property
    def policy_version(self) -> int:
        return self.engine.policy_version

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((list(requests), future))
        await self._flush_if_all_waiting()
        return await future

    async def leave(self) -> None:
        """A search finished: the others no longer wait for it."""
        self.active -= 1
        await self._flush_if_all_waiting()

    async def _flush_if_all_waiting(self) -> None:
        if not self.pending or len(self.pending) < self.active:
            return
        batch, self.pending = self.pending, []
        try:
            results = await self.engine.generate([q for reqs, _ in batch for q in reqs])
        except Exception as e:
            for _, future in batch:
                future.set_exception(e)
            return
        start = 0
        for reqs, future in batch:
            future.set_result(results[start : start + len(reqs)])
            start += len(reqs)


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


def shape_from_config(path: str | Path) -> Shape:
    """The generation shape of a run config (the sections actors and estimators read)."""
    data = load_toml(path)
    actor, estimator = data.get("actor", {}), data.get("estimator", {})
    return Shape(
        rollout=from_mapping(RolloutConfig, actor.get("rollout", {}), "actor.rollout"),
        batch_messages=int(actor.get("batch_messages", 8)),
        mc=from_mapping(McConfig, estimator.get("mc", {}), "estimator.mc"),
        n_reset=int(estimator.get("n_reset", 4)),
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
