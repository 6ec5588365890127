"""gpo-estimator: the advantage-estimator pool (GPO.md steps 2-5).

Consumes `trajectories` as group `estimators`, up to `batch_messages` at a time. The fresh
trajectories of a batch go through the Monte Carlo step-value search together
(`actors.mc_search.find_critical_steps`: each round of all their searches is one `generate`
call); for each, a ResetRequest goes on `resets` when a critical step exists and selection is
not `none`, and a Sample on `samples` carrying the step values and per-token MC advantages.
A reset rollout needs no MC: its advantage is reward - V(s_m), the value carried with the
request. With `reuse_mc_rollouts` the search's own continuations from s_m are those reset
rollouts: they go on `samples` from here, in place of the request. The samples and
requests are built by the pure functions of `actors.samples`; this file is the process:
the loop, its metrics (once per batch) and publishing. Every message is acked only after
its outputs are published. It follows adapter versions like an actor, keeps the lease of
every message of the batch alive while it works, and on SIGTERM finishes the batch in hand,
then exits 0. A redelivered trajectory (its last
holder died or failed on it) is estimated alone, so one that kills the estimator every time
reaches the dead stream without taking the others along (RELIABILITY.md test 10).

    gpo-estimator --config run.toml [--redis-url URL] [--run-id ID] [--name NAME] [--metrics-port P]
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass, field

from actors.engines.base import Engine
from actors.engines.factory import EngineConfig
from actors.inference_process import inference_main
from actors.mc_config import McConfig
from actors.mc_search import find_critical_steps
from actors.rollout import RolloutConfig
from actors.samples import (
    BatchCounts,
    Output,
    answer_resets,
    is_target,
    reset_sample,
    search_input,
    searched_outputs,
    unsearched_sample,
)
from actors.tasks.base import Task
from actors.weights import WeightsSync
from protocol.adapters import FetchConfig
from protocol.codec import CodecLimits, encode
from protocol.consumer import Consumer, Delivery
from protocol.messages import ResetRequest, Sample, Trajectory
from protocol.metrics import Metrics, timed
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
    """Rollouts asked for from each critical step (GPO.md: the per-prompt group size); at most
    the actors' `actor.max_reset_n`."""
    batch_messages: int = 8
    """Most trajectories read and estimated together: the MC searches of the fresh ones send
    each round's requests as one `generate` call (8: two prompts' groups of 4 rollouts)."""
    mc_values: bool = True
    """Run the MC search even when selection is `none` (the learner's `mc` advantages need it)."""
    reuse_mc_rollouts: bool = True
    """GPO.md step 5: the continuations the search drew from the critical state s_m become
    its reset rollouts (the first `n_reset` of them; fewer when fewer were drawn), published
    here as reset samples instead of a reset request: no generation pass on the actors. Their
    advantage reward - V(s_m) then uses a V(s_m) estimated from these same rollouts (a group
    baseline). With `mc.share_states` a state's continuations answer one reset per batch;
    another trajectory of the batch with the same s_m gets a reset request. On by default (it
    saves the reset rollouts' generation, `gpo bench gpo-overhead`); off, the actors draw
    fresh reset rollouts from s_m (the paper)."""
    fetch: FetchConfig = field(default_factory=FetchConfig)
    """How adapter versions are read from Redis and shared on the host (`[estimator.fetch]`)."""

    def __post_init__(self) -> None:
        if self.n_reset < 1 or self.batch_messages < 1:
            raise ValueError("estimator.n_reset and estimator.batch_messages must be >= 1")


class EstimatorMetrics:
    def __init__(self, m: Metrics):
        self.rollouts = m.counter("mc_rollouts_total", "MC continuations generated.")
        self.tokens = m.counter(
            "generated_tokens_total", "Tokens of the MC continuations generated."
        )
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

    def record(self, counts: BatchCounts) -> None:
        """One batch's search metrics (its published messages are counted by `publish`)."""
        self.estimated.inc(counts.estimated)
        self.unsearched.inc(counts.unsearched)
        self.rollouts.inc(counts.rollouts)
        self.tokens.inc(counts.tokens)
        self.no_critical.inc(counts.no_critical)
        self.reused.inc(counts.reused)
        for _ in range(counts.estimated):
            self.seconds.observe(counts.seconds_per_trajectory)
        for step, steps in counts.critical:
            self.critical_index.observe(step)
            self.critical_position.observe(step / steps)


async def estimate(
    traj: Trajectory, engine: Engine, task: Task, tokenizer, cfg: EstimatorConfig
) -> Output:
    """The Sample for one trajectory, and its ResetRequest if a critical step was chosen
    (`estimate_batch` of one, without the reset samples `reuse_mc_rollouts` adds)."""
    outputs, _ = await estimate_batch([traj], engine, task, tokenizer, cfg)
    return outputs[0]


async def estimate_batch(
    trajs: list[Trajectory],
    engine: Engine,
    task: Task,
    tokenizer,
    cfg: EstimatorConfig,
    name: str = "estimator",
) -> tuple[list[Output], BatchCounts]:
    """Per trajectory, in order: its Sample, and its ResetRequest if a critical step was chosen;
    then, with `reuse_mc_rollouts`, the reset samples made from MC continuations (generated by
    `name`), each as (Sample, None), in place of the requests they answer. And the batch's
    counts, for its metrics.

    Reset rollouts (and fresh ones the search does not take) need no generation; the MC
    searches of the other trajectories run together, each seeded from its trajectory id, so
    each result is the one its search gives alone (unless `mc.share_states`: then a state
    several of them reach is estimated once for all)."""
    counts = BatchCounts()
    out: list[Output | None] = [None] * len(trajs)
    wants_mc = cfg.mc.selection != "none" or cfg.mc_values
    fresh = []
    for i, traj in enumerate(trajs):
        if traj.kind == "reset":
            out[i] = reset_sample(traj), None
        elif not wants_mc or not is_target(traj.id, traj.reward, cfg.mc, cfg.rollout.seed):
            out[i] = unsearched_sample(traj), None
            counts.unsearched += wants_mc
        else:
            fresh.append(i)
    if not fresh:
        return out, counts
    with timed() as search:
        searches = [search_input(trajs[i], tokenizer, cfg.rollout, cfg.mc) for i in fresh]
        results = await find_critical_steps(
            engine,
            task,
            [subject for subject, _ in searches],
            [mc for _, mc in searches],
            decode=functools.partial(tokenizer.decode, skip_special_tokens=True),
        )
    counts.seconds_per_trajectory = search.seconds / len(fresh)
    for i, result in zip(fresh, results, strict=True):
        out[i] = searched_outputs(
            trajs[i], result, cfg.n_reset, cfg.mc.selection, engine.policy_version, counts
        )
    if cfg.reuse_mc_rollouts:
        out += answer_resets(
            out,
            dict(zip(fresh, results, strict=True)),
            task,
            tokenizer,
            cfg.rollout,
            cfg.n_reset,
            cfg.mc.share_states,
            name,
            counts,
        )
    return out, counts


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
    weights = WeightsSync(rt.link, rt.keys, engine, rt.metrics, cfg.fetch)
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
            outputs, counts = await estimate_batch(
                [d.message for d in batch], engine, task, tokenizer, cfg, rt.name
            )
            await publish(producer, outputs, m)
        m.record(counts)
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
