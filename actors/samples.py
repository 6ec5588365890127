"""What the estimator publishes, built by pure functions: samples, reset requests, and the
counts of one batch (GPO.md steps 4-6).

Nothing here generates, touches Redis or records a metric: `actors.estimator` runs the MC
searches, calls these builders, records `BatchCounts` once per batch and publishes. The
benches (`gpo bench learner`, `gpo bench gpo-overhead`) build their samples and resets with
the same functions.

A fresh trajectory the search took gets a Sample with its per-token MC advantages and step
values, and a ResetRequest at its critical step (unless selection is `none`); one it did not
take (`mc.targets`) gets a Sample without step values (the learner baselines it by its
group) and no reset. A reset rollout's Sample carries reward - V(s_m) and its baseline
group (the reset state) with V(s_m) and the count of continuations behind it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from actors.critical import searched
from actors.engines.base import GenerationResult
from actors.mc_config import McConfig
from actors.mc_search import CriticalStepResult, StepTrajectory
from actors.rollout import RolloutConfig, seed_for, trajectories_for
from actors.tasks.base import Task, TaskPrompt
from protocol.messages import ResetRequest, Sample, Selection, Trajectory

Output = tuple[Sample, ResetRequest | None]
"""A sample, and the reset request it comes with (or None)."""


@dataclass
class BatchCounts:
    """What one estimator batch did, for its metrics (recorded once per batch)."""

    estimated: int = 0
    """Fresh trajectories searched."""
    unsearched: int = 0
    """Fresh trajectories passed on without a search (`mc.targets`)."""
    rollouts: int = 0
    """MC continuations generated (a shared state's counted once)."""
    tokens: int = 0
    """Tokens of those continuations."""
    no_critical: int = 0
    """Searched trajectories whose advantages were all zero."""
    critical: list[tuple[int, int]] = field(default_factory=list)
    """(chosen step, number of steps) of each searched trajectory with a critical step."""
    reused: int = 0
    """MC continuations published as reset rollouts (`reuse_mc_rollouts`)."""
    seconds_per_trajectory: float = 0.0
    """MC wall time of the batch divided by the trajectories searched."""


def token_advantages(step_spans, advantages: np.ndarray, n_tokens: int) -> np.ndarray:
    """Per-completion-token MC advantage: every token of step i gets A_i. Shape (n_tokens,)."""
    out = np.zeros(n_tokens, dtype=np.float32)
    for (start, end), a in zip(step_spans, advantages, strict=True):
        out[start:end] = a
    return out


def reset_id(trajectory_id: str) -> str:
    """The id of the reset request of a trajectory (one per trajectory, whoever estimates it);
    it names the baseline group of the reset rollouts it yields."""
    return f"reset:{trajectory_id}"


def make_sample(
    traj: Trajectory, completion_advantages: np.ndarray, step_values: np.ndarray
) -> Sample:
    """A training sample: prefix tokens masked out, behaviour logprobs and advantages on the
    completion tokens (zeros on the prefix). Its baseline group is the prompt (fresh) or the
    reset state it was drawn from, with that state's MC value and count (reset)."""
    p, c = len(traj.prefix_token_ids), len(traj.completion_token_ids)
    zeros = np.zeros(p, dtype=np.float32)
    is_reset = traj.kind == "reset"
    return Sample(
        id=traj.id,
        run=traj.run,
        ts=time.time(),
        prompt_id=traj.prompt_id,
        kind=traj.kind,
        token_ids=np.concatenate([traj.prefix_token_ids, traj.completion_token_ids]),
        loss_mask=np.concatenate([np.zeros(p, np.int32), np.ones(c, np.int32)]),
        logprobs=np.concatenate([zeros, traj.logprobs]),
        advantages=np.concatenate([zeros, completion_advantages]),
        returns=np.zeros(0, np.float32),
        step_values=step_values,
        reward=traj.reward,
        policy_version=traj.policy_version,
        group=reset_id(traj.parent_id) if is_reset else traj.prompt_id,
        baseline_value=float(traj.reset_value) if is_reset else 0.0,
        baseline_count=traj.reset_value_count if is_reset else 0,
    )


def reset_sample(traj: Trajectory) -> Sample:
    """The Sample of a reset rollout: every completion token gets reward - V(s_m) (the
    learner's `reset_baseline = "value"`; with `loo` it recomputes them per batch)."""
    adv = np.full(len(traj.completion_token_ids), traj.reward - traj.reset_value, np.float32)
    return make_sample(traj, adv, np.zeros(0, np.float32))


def unsearched_sample(traj: Trajectory) -> Sample:
    """The Sample of a fresh trajectory the search did not take: no step values, zero
    advantages (the learner gives it its group's advantage)."""
    zeros = np.zeros(len(traj.completion_token_ids), np.float32)
    return make_sample(traj, zeros, np.zeros(0, np.float32))


def make_reset(
    traj: Trajectory, result: CriticalStepResult, n: int, selection: Selection, version: int
) -> ResetRequest:
    """The request for `n` rollouts from just before the critical step of `result`."""
    m = result.critical_step
    start = traj.step_spans[m][0]
    return ResetRequest(
        id=reset_id(traj.id),
        run=traj.run,
        ts=time.time(),
        trajectory_id=traj.id,
        prompt_id=traj.prompt_id,
        task=traj.task,
        answer=traj.answer,
        critical_step=m,
        prompt_len=traj.prompt_len,
        prefix_token_ids=np.concatenate([traj.prefix_token_ids, traj.completion_token_ids[:start]]),
        step_values=result.values,
        advantages=result.advantages,
        value=float(result.values[m]),
        n=n,
        policy_version=version,
        selection=selection,
        value_count=int(result.counts[m]),
    )


def searched_outputs(
    traj: Trajectory,
    result: CriticalStepResult,
    n_reset: int,
    selection: Selection,
    version: int,
    counts: BatchCounts,
) -> Output:
    """The Sample of a searched fresh trajectory, and its ResetRequest if one is due; adds
    the search to `counts`."""
    counts.estimated += 1
    counts.rollouts += result.rollouts - result.shared_rollouts
    counts.tokens += result.tokens
    sample = make_sample(
        traj,
        token_advantages(traj.step_spans, result.advantages, len(traj.completion_token_ids)),
        result.values,
    )
    if result.critical_step is None:
        counts.no_critical += 1
        return sample, None
    counts.critical.append((result.critical_step, len(traj.step_spans)))
    if selection == "none":
        return sample, None
    return sample, make_reset(traj, result, n_reset, selection, version)


def is_target(trajectory_id: str, reward: float, mc: McConfig, seed: int) -> bool:
    """Whether the MC search takes this fresh trajectory (`mc.targets`). The draw that
    decides for a sampled success is fixed by the id, so a redelivery decides the same."""
    draw = seed_for(f"target:{trajectory_id}", seed) / 2**31
    return searched(reward, mc.targets, mc.success_share, draw)


def search_input(
    traj: Trajectory, tokenizer, rollout: RolloutConfig, mc: McConfig
) -> tuple[StepTrajectory, McConfig]:
    """A fresh trajectory as MC search takes it, and its search config: the estimator's
    sampling and MC settings, seeded from the trajectory id."""
    seed = seed_for(traj.id, rollout.seed)
    config = dataclasses.replace(mc, sampling=rollout.sampling(seed), seed=seed)
    subject = StepTrajectory(
        prompt_token_ids=traj.prefix_token_ids.tolist(),
        completion_token_ids=traj.completion_token_ids.tolist(),
        step_spans=traj.step_spans,
        reward=traj.reward,
        logprobs=traj.logprobs.tolist(),
        prompt=TaskPrompt(
            id=traj.prompt_id,
            text=tokenizer.decode(
                traj.prefix_token_ids[: traj.prompt_len].tolist(), skip_special_tokens=True
            ),
            answer=traj.answer,
        ),
    )
    return subject, config


def answerable(states: Sequence[Hashable], share_states: bool) -> list[bool]:
    """`reuse_mc_rollouts`: which of a batch's due resets (their states s_m, in order) the
    searches' continuations answer. All of them, except that with `share_states` the searches
    of one state drew the same continuations, so only its first reset is answered."""
    seen: set[Hashable] = set()
    out = []
    for state in states:
        out.append(not (share_states and state in seen))
        seen.add(state)
    return out


def answer_resets(
    out: list[Output],
    results: dict[int, CriticalStepResult],
    task: Task,
    tokenizer,
    rollout: RolloutConfig,
    n_reset: int,
    share_states: bool,
    name: str,
    counts: BatchCounts,
) -> list[tuple[Sample, None]]:
    """`reuse_mc_rollouts`: answer the batch's reset requests from the searches' own
    continuations at s_m, made into reset trajectories as an actor makes them (ids
    `<request id>/<j>`, scored and segmented the same way, generated by `name`). Each
    answered request is taken out of `out`; returns the reset samples, each as (Sample,
    None). With `share_states` a state's continuations answer one request per batch; the
    others stay requests for the actors."""
    due = {
        i: out[i][1].prefix_token_ids.tobytes()
        for i, result in results.items()
        if out[i][1] is not None and result.critical_completions
    }
    extra: list[tuple[Sample, None]] = []
    for i, yes in zip(due, answerable(list(due.values()), share_states), strict=True):
        if not yes:
            continue
        sample, reset = out[i]
        completions = results[i].critical_completions[:n_reset]
        # the siblings are the continuations V(s_m) averages: nothing independent to pool
        rollouts = trajectories_for(
            dataclasses.replace(reset, value_count=0),
            GenerationResult(completions, reset.policy_version),
            task,
            tokenizer,
            rollout,
            name,
            0.0,
        )
        out[i] = sample, None
        extra += [(reset_sample(t), None) for t in rollouts]
        counts.reused += len(completions)
    return extra
