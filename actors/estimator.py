"""gpo-estimator: the advantage-estimator pool (GPO.md steps 2-5).

Consumes `trajectories` as group `estimators`. For a fresh trajectory it runs the Monte Carlo
step-value search (`actors.mc_search.find_critical_step`), publishes a ResetRequest on
`resets` when a critical step exists and selection is not `none`, and a Sample on `samples`
carrying the step values and per-token MC advantages. For a reset rollout it needs no MC:
its advantage is reward - V(s_m), the value carried with the request. It follows adapter
versions like an actor, keeps the lease of long MC jobs alive, and on SIGTERM finishes the
trajectory in hand, then exits 0.

    gpo-estimator --config run.toml [--redis-url URL] [--run-id ID] [--name NAME] [--metrics-port P]
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from actors.engines.base import Engine
from actors.engines.factory import EngineConfig
from actors.inference_process import inference_main
from actors.mc_search import McConfig, StepTrajectory, find_critical_step
from actors.rollout import RolloutConfig, seed_for
from actors.tasks.base import Task, TaskPrompt
from actors.weights import WeightsSync
from protocol.codec import CodecLimits, encode
from protocol.consumer import Consumer
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
    mc_values: bool = True
    """Run the MC search even when selection is `none` (the learner's `mc` advantages need it)."""
    fetch_concurrency: int = 4
    """Adapter chunks fetched at once."""

    def __post_init__(self) -> None:
        if self.n_reset < 1:
            raise ValueError("estimator.n_reset must be >= 1")


class EstimatorMetrics:
    def __init__(self, m: Metrics):
        self.rollouts = m.counter("mc_rollouts_total", "MC continuations generated.")
        self.seconds = m.histogram(
            "trajectory_seconds", "Wall time to estimate one fresh trajectory."
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
        self.no_critical = m.counter(
            "no_critical_step_total",
            "Fresh trajectories whose advantages were all zero (no reset).",
        )
        self.resets = m.counter("reset_requests_total", "Reset requests published.", ("selection",))
        self.samples = m.counter("samples_total", "Samples published.", ("kind",))


def token_advantages(step_spans, advantages: np.ndarray, n_tokens: int) -> np.ndarray:
    """Per-completion-token MC advantage: every token of step i gets A_i. Shape (n_tokens,)."""
    out = np.zeros(n_tokens, dtype=np.float32)
    for (start, end), a in zip(step_spans, advantages, strict=True):
        out[start:end] = a
    return out


def make_sample(
    traj: Trajectory, completion_advantages: np.ndarray, step_values: np.ndarray
) -> Sample:
    """A training sample: prefix tokens masked out, behaviour logprobs and advantages on the
    completion tokens (zeros on the prefix)."""
    p, c = len(traj.prefix_token_ids), len(traj.completion_token_ids)
    zeros = np.zeros(p, dtype=np.float32)
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
    )


def make_reset(traj: Trajectory, result, cfg: EstimatorConfig, version: int) -> ResetRequest:
    m = result.critical_step
    start = traj.step_spans[m][0]
    return ResetRequest(
        id=f"reset:{traj.id}",
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
    )


async def estimate(
    traj: Trajectory,
    engine: Engine,
    task: Task,
    tokenizer,
    cfg: EstimatorConfig,
    m: EstimatorMetrics,
) -> tuple[Sample, ResetRequest | None]:
    """The Sample for one trajectory, and its ResetRequest if a critical step was chosen."""
    if traj.kind == "reset":
        adv = np.full(
            len(traj.completion_token_ids), traj.reward - traj.reset_value, dtype=np.float32
        )
        return make_sample(traj, adv, np.zeros(0, np.float32)), None
    if cfg.mc.selection == "none" and not cfg.mc_values:
        return make_sample(
            traj, np.zeros(len(traj.completion_token_ids), np.float32), np.zeros(0, np.float32)
        ), None
    start = time.perf_counter()
    seed = seed_for(traj.id, cfg.rollout.seed)
    mc = dataclasses.replace(cfg.mc, sampling=cfg.rollout.sampling(seed), seed=seed)
    subject = StepTrajectory(
        prompt_token_ids=traj.prefix_token_ids.tolist(),
        completion_token_ids=traj.completion_token_ids.tolist(),
        step_spans=traj.step_spans,
        reward=traj.reward,
        prompt=TaskPrompt(
            id=traj.prompt_id,
            text=tokenizer.decode(
                traj.prefix_token_ids[: traj.prompt_len].tolist(), skip_special_tokens=True
            ),
            answer=traj.answer,
        ),
    )
    decode = functools.partial(tokenizer.decode, skip_special_tokens=True)
    result = await find_critical_step(engine, task, subject, mc, decode=decode)
    m.seconds.observe(time.perf_counter() - start)
    m.rollouts.inc(result.rollouts)
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
    return sample, make_reset(traj, result, cfg, engine.policy_version)


async def run(cfg: EstimatorConfig, rt: Runtime, engine: Engine, task: Task, tokenizer) -> int:
    """The estimator loop: sync weights, take one trajectory, estimate, publish, ack."""
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
        "estimating for task %s as %s (selection %s, K %d, budget %s)",
        task.name,
        rt.name,
        cfg.mc.selection,
        cfg.mc.k,
        cfg.mc.budget,
    )
    while not rt.stop.is_set():
        # 1. MC continuations run under the newest adapter we have
        await weights.sync()
        # 2. one trajectory at a time: its MC batch is already T x K sequences
        (delivery,) = await trajectories.read(count=1) or (None,)
        if delivery is None:
            continue
        traj = delivery.message
        if traj.task != task.name:
            await trajectories.dead_letter(
                delivery.entry_id, encode(traj), f"wrong_task: {traj.task!r}"
            )
            continue
        # 3. estimate and 4. publish, keeping the lease throughout: the MC search is long,
        # and publishing waits for room in `samples` as long as the learner lags
        async with trajectories.lease([delivery]):
            sample, reset = await estimate(traj, engine, task, tokenizer, cfg, m)
            # the reset request first (it is the latency-critical one), then the sample
            if reset is not None:
                # Never wait on `resets`: the actor that drains it may itself be waiting on
                # us (trajectories), and resets are bounded anyway (one per trajectory).
                await producer.send(RESETS, reset, wait=False)
                m.resets.labels(reset.selection).inc()
            await producer.send(SAMPLES, sample)
        m.samples.labels(sample.kind).inc()
        # 5. ack; a crash before this republishes the same ids, which consumers deduplicate
        await trajectories.ack([delivery])
    log.info("stopping: trajectory in hand finished and acknowledged")
    return 0


def main(argv: list[str] | None = None) -> int:
    return inference_main("estimator", __doc__, EstimatorConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
