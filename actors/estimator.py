"""gpo-estimator: the advantage-estimator pool (GPO.md steps 2-5).

Consumes `trajectories` as group `estimators`, up to `batch_messages` at a time. The fresh
trajectories of a batch go through the Monte Carlo step-value search together
(`actors.mc_search.find_critical_steps`: each round of all their searches is one `generate`
call); for each, a ResetRequest goes on `resets` when a critical step exists and selection is
not `none`, and a Sample on `samples` carrying the step values and per-token MC advantages.
A reset rollout needs no MC: its advantage is reward - V(s_m), the value carried with the
request. With `reuse_mc_rollouts` the search's own continuations from s_m are those reset
rollouts: they go on `samples` from here, in place of the request. Every message is acked
only after its outputs are published. It follows adapter versions like an actor, keeps the lease of every message of the batch alive while it works,
and on SIGTERM finishes the batch in hand, then exits 0. A redelivered trajectory (its last
holder died or failed on it) is estimated alone, so one that kills the estimator every time
reaches the dead stream without taking the others along (RELIABILITY.md test 10).

    gpo-estimator --config run.toml [--redis-url URL] [--run-id ID] [--name NAME] [--metrics-port P]
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from actors.critical import searched
from actors.engines.base import Engine, GenerationResult
from actors.engines.factory import EngineConfig
from actors.inference_process import inference_main
from actors.mc_search import CriticalStepResult, McConfig, StepTrajectory, find_critical_steps
from actors.rollout import RolloutConfig, seed_for, trajectories_for
from actors.tasks.base import Task, TaskPrompt
from actors.weights import WeightsSync
from protocol.codec import CodecLimits, encode
from protocol.consumer import Consumer, Delivery
from protocol.messages import ResetRequest, Sample, Trajectory
from protocol.metrics import Metrics
from protocol.process import Runtime
from protocol.producer import Producer
from protocol.streams import GROUP_ESTIMATORS, RESETS, SAMPLES, TRAJECTORIES

log = logging.getLogger("gpo.estimator")


@dataclass(frozen=True, slots=True)
class EstimatorConfig:
    """TOML section `[estimator]`."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    """The inference engine and base model (`[estimator.engine]`)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling of MC continuations: keep it equal to the actors' (`[estimator.rollout]`)."""
    mc: McConfig = field(default_factory=McConfig)
    """MC search: K, selection (`advantage` | `random` | `none`), budget (`[estimator.mc]`)."""
    task: str = "arithmetic"
    """Task plugin: a built-in name or `package.module:Class` (the verifier of continuations)."""
    task_options: dict = field(default_factory=dict)
    """Keyword options of the task class."""
    n_reset: int = 4
    """Rollouts asked for from each critical step (GPO.md: the per-prompt group size)."""
    batch_messages: int = 8
    """Most trajectories read and estimated together: the MC searches of the fresh ones send
    each round's requests as one `generate` call (8: two prompts' groups of 4 rollouts)."""
    mc_values: bool = True
    """Run the MC search even when selection is `none` (the learner's `mc` advantages need it)."""
    reuse_mc_rollouts: bool = False
    """GPO.md step 5: the continuations the search drew from the critical state s_m become
    its reset rollouts (the first `n_reset` of them; fewer when fewer were drawn), published
    here as reset samples instead of a reset request: no generation pass on the actors. Their
    advantage reward - V(s_m) then uses a V(s_m) estimated from these same rollouts (a group
    baseline). With `mc.share_states` a state's continuations answer one reset per batch;
    another trajectory of the batch with the same s_m gets a reset request. Off by default so
    the baseline comparison is clean."""
    fetch_concurrency: int = 4
    """Adapter chunks fetched at once."""

    def __post_init__(self) -> None:
        if self.n_reset < 1 or self.batch_messages < 1:
            raise ValueError("estimator.n_reset and estimator.batch_messages must be >= 1")


class EstimatorMetrics:
    def __init__(self, m: Metrics):
        self.rollouts = m.counter("mc_rollouts_total", "MC continuations generated.")
        self.seconds = m.histogram(
            "trajectory_seconds",
            "Wall time to estimate one fresh trajectory: the MC search of its batch divided "
            "by the fresh trajectories in it.",
        )
        self.critical_index = m.histogram(
            "critical_step_index", "Index of the chosen critical step.", buckets=tuple(range(0, 25))
        )
        self.critical_position = m.histogram(
            "critical_step_position_ratio",
            "Chosen step index / number of steps.",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
        )
        self.estimated = m.counter(
            "trajectories_estimated_total", "Fresh trajectories estimated by MC."
        )
        self.unsearched = m.counter(
            "trajectories_unsearched_total",
            "Fresh trajectories passed on without MC search (mc.targets): no reset; the "
            "learner gives them their group's advantage.",
        )
        self.no_critical = m.counter(
            "no_critical_step_total",
            "Fresh trajectories whose advantages were all zero (no reset).",
        )
        self.resets = m.counter("reset_requests_total", "Reset requests published.", ("selection",))
        self.reused = m.counter(
            "mc_rollouts_reused_total",
            "MC continuations from a critical state published as reset rollouts "
            "(reuse_mc_rollouts).",
        )
        self.samples = m.counter("samples_total", "Samples published.", ("kind",))


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


def make_reset(traj: Trajectory, result, cfg: EstimatorConfig, version: int) -> ResetRequest:
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
        n=cfg.n_reset,
        policy_version=version,
        selection=cfg.mc.selection,
        value_count=int(result.counts[m]),
    )


async def estimate(
    traj: Trajectory,
    engine: Engine,
    task: Task,
    tokenizer,
    cfg: EstimatorConfig,
    m: EstimatorMetrics,
) -> tuple[Sample, ResetRequest | None]:
    """The Sample for one trajectory, and its ResetRequest if a critical step was chosen
    (`estimate_batch` of one, without the reset samples `reuse_mc_rollouts` adds)."""
    return (await estimate_batch([traj], engine, task, tokenizer, cfg, m))[0]


async def estimate_batch(
    trajs: list[Trajectory],
    engine: Engine,
    task: Task,
    tokenizer,
    cfg: EstimatorConfig,
    m: EstimatorMetrics,
    name: str = "estimator",
) -> list[tuple[Sample, ResetRequest | None]]:
    """Per trajectory, in order: its Sample, and its ResetRequest if a critical step was chosen;
    then, with `reuse_mc_rollouts`, the reset samples made from MC continuations (generated by
    `name`), each as (Sample, None), in place of the requests they answer.

    Reset rollouts (and fresh ones when no MC is wanted) need no generation; the MC searches
    of the other trajectories run together, each seeded from its trajectory id, so each
    result is the one its search gives alone (unless `mc.share_states`: then a state several
    of them reach is estimated once for all)."""
    out: list[tuple[Sample, ResetRequest | None] | None] = [None] * len(trajs)
    fresh = []
    for i, traj in enumerate(trajs):
        if traj.kind == "reset":
            out[i] = reset_sample(traj), None
        elif (cfg.mc.selection == "none" and not cfg.mc_values) or not is_target(traj, cfg):
            # no step values: the learner gives it its group's advantage
            zeros = np.zeros(len(traj.completion_token_ids), np.float32)
            out[i] = make_sample(traj, zeros, np.zeros(0, np.float32)), None
            if cfg.mc.selection != "none" or cfg.mc_values:
                m.unsearched.inc()
        else:
            fresh.append(i)
    if not fresh:
        return out
    start = time.perf_counter()
    searches = [search_input(trajs[i], tokenizer, cfg) for i in fresh]
    results = await find_critical_steps(
        engine,
        task,
        [subject for subject, _ in searches],
        [mc for _, mc in searches],
        decode=functools.partial(tokenizer.decode, skip_special_tokens=True),
    )
    seconds = (time.perf_counter() - start) / len(fresh)
    for i, result in zip(fresh, results, strict=True):
        m.seconds.observe(seconds)
        out[i] = outputs_of(trajs[i], result, cfg, engine.policy_version, m)
    if cfg.reuse_mc_rollouts:
        searched = dict(zip(fresh, results, strict=True))
        out += answer_resets(out, searched, task, tokenizer, cfg, m, name)
    return out


def is_target(traj: Trajectory, cfg: EstimatorConfig) -> bool:
    """Whether the MC search takes this fresh trajectory (`mc.targets`)."""
    draw = target_draw(traj.id, cfg.rollout.seed)
    return searched(traj.reward, cfg.mc.targets, cfg.mc.success_share, draw)


def target_draw(trajectory_id: str, seed: int) -> float:
    """The uniform draw in [0, 1) that decides whether a successful trajectory is searched
    (`failed_sampled`): fixed by the id, so a redelivery decides the same."""
    return seed_for(f"target:{trajectory_id}", seed) / 2**31


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
    out: list[tuple[Sample, ResetRequest | None]],
    results: dict[int, CriticalStepResult],
    task: Task,
    tokenizer,
    cfg: EstimatorConfig,
    m: EstimatorMetrics,
    name: str,
) -> list[tuple[Sample, None]]:
    """`reuse_mc_rollouts`: answer the batch's reset requests from the searches' own
    continuations at s_m, made into reset trajectories as an actor makes them (ids
    `<request id>/<j>`, scored and segmented the same way). Each answered request is taken
    out of `out`; returns the reset samples, each as (Sample, None). With `mc.share_states`
    a state's continuations answer one request per batch; the others stay requests for the
    actors."""
    due = {
        i: out[i][1].prefix_token_ids.tobytes()
        for i, result in results.items()
        if out[i][1] is not None and result.critical_completions
    }
    extra: list[tuple[Sample, None]] = []
    for i, yes in zip(due, answerable(list(due.values()), cfg.mc.share_states), strict=True):
        if not yes:
            continue
        sample, reset = out[i]
        completions = results[i].critical_completions[: cfg.n_reset]
        # the siblings are the continuations V(s_m) averages: nothing independent to pool
        rollouts = trajectories_for(
            dataclasses.replace(reset, value_count=0),
            GenerationResult(completions, reset.policy_version),
            task,
            tokenizer,
            cfg.rollout,
            name,
            0.0,
        )
        out[i] = sample, None
        extra += [(reset_sample(t), None) for t in rollouts]
        m.reused.inc(len(completions))
    return extra


def search_input(
    traj: Trajectory, tokenizer, cfg: EstimatorConfig
) -> tuple[StepTrajectory, McConfig]:
    """A fresh trajectory as MC search takes it, and its search config: the estimator's
    sampling and MC settings, seeded from the trajectory id."""
    seed = seed_for(traj.id, cfg.rollout.seed)
    mc = dataclasses.replace(cfg.mc, sampling=cfg.rollout.sampling(seed), seed=seed)
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
    return subject, mc


def outputs_of(
    traj: Trajectory,
    result: CriticalStepResult,
    cfg: EstimatorConfig,
    version: int,
    m: EstimatorMetrics,
) -> tuple[Sample, ResetRequest | None]:
    """The Sample of a searched fresh trajectory, and its ResetRequest if one is due."""
    m.rollouts.inc(result.rollouts - result.shared_rollouts)
    m.estimated.inc()
    sample = make_sample(
        traj,
        token_advantages(traj.step_spans, result.advantages, len(traj.completion_token_ids)),
        result.values,
    )
    if result.critical_step is None:
        m.no_critical.inc()
        return sample, None
    m.critical_index.observe(result.critical_step)
    m.critical_position.observe(result.critical_step / len(traj.step_spans))
    if cfg.mc.selection == "none":
        return sample, None
    return sample, make_reset(traj, result, cfg, version)


async def run(cfg: EstimatorConfig, rt: Runtime, engine: Engine, task: Task, tokenizer) -> int:
    """The estimator loop: sync weights, take a batch, estimate, publish, ack."""
    limits = CodecLimits(max_bytes=rt.redis_cfg.max_message_bytes, vocab_size=len(tokenizer))
    trajectories = Consumer(
        rt.link,
        rt.keys,
        TRAJECTORIES,
        GROUP_ESTIMATORS,
        rt.name,
        rt.redis_cfg,
        rt.transport,
        limits,
    )
    producer = Producer(rt.link, rt.keys, rt.redis_cfg, rt.transport, rt.stop)
    weights = WeightsSync(rt.link, rt.keys, engine, rt.metrics, cfg.fetch_concurrency)
    m = EstimatorMetrics(rt.metrics)
    await trajectories.ensure_group()
    log.info(
        "estimating for task %s as %s (selection %s, K %d, budget %s, batch %d%s%s)",
        task.name,
        rt.name,
        cfg.mc.selection,
        cfg.mc.k,
        cfg.mc.budget,
        cfg.batch_messages,
        ", shared states" if cfg.mc.share_states else "",
        ", MC rollouts reused" if cfg.reuse_mc_rollouts else "",
    )
    while not rt.stop.is_set():
        # 1. MC continuations run under the newest adapter we have
        await weights.sync()
        # 2. up to batch_messages trajectories; the consumer hands a redelivery out alone
        batch = await trajectories.read(count=cfg.batch_messages)
        batch = await drop_wrong_task(trajectories, batch, task.name)
        if not batch:
            continue
        # 3. estimate and publish, keeping the lease of every message of the batch meanwhile
        async with trajectories.lease(batch):
            outputs = await estimate_batch(
                [d.message for d in batch], engine, task, tokenizer, cfg, m, rt.name
            )
            await publish(producer, outputs, m)
        # 4. ack; a crash before this republishes the same ids, which consumers deduplicate
        await trajectories.ack(batch)
    log.info("stopping: batch in hand finished and acknowledged")
    return 0


async def drop_wrong_task(
    trajectories: Consumer, batch: list[Delivery], task_name: str
) -> list[Delivery]:
    """Trajectories of another task cannot be scored here: dead-letter them with the reason."""
    keep = []
    for d in batch:
        if d.message.task == task_name:
            keep.append(d)
        else:
            await trajectories.dead_letter(
                d.entry_id, encode(d.message), f"wrong_task: {d.message.task!r}"
            )
    return keep


async def publish(
    producer: Producer, outputs: list[tuple[Sample, ResetRequest | None]], m: EstimatorMetrics
) -> None:
    """The reset requests first (the latency-critical ones), then the samples."""
    resets = [reset for _, reset in outputs if reset is not None]
    # Never wait on `resets`: the actor that drains it may itself be waiting on us
    # (trajectories), and resets are bounded anyway (at most one per trajectory).
    await producer.send(RESETS, resets, wait=False)
    for reset in resets:
        m.resets.labels(reset.selection).inc()
    samples = [sample for sample, _ in outputs]
    await producer.send(SAMPLES, samples)
    for sample in samples:
        m.samples.labels(sample.kind).inc()


def main(argv: list[str] | None = None) -> int:
    return inference_main("estimator", __doc__, EstimatorConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
