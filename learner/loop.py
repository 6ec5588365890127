"""The learner loop: feed prompts, read samples, train, publish, checkpoint, ack.

Exactly-once training (RELIABILITY.md test 18) rests on one rule: **the checkpoint is the
commit point and acks follow it**. Per update the order is

    optimizer step -> publish adapter -> [every N updates: checkpoint -> ack]

and the samples of an update stay pending in Redis (unacked, owned by this consumer) until
a checkpoint holding both their effect on the weights and their ids exists. A `kill -9` at
any point therefore leaves one of two states, and both are right:
- before the checkpoint is renamed into place: the restart loads the previous checkpoint,
  whose dedup set lacks those ids, and the samples, still pending, are redelivered and
  trained once on the restored weights (the lost update never reached a checkpoint);
- after it: the restart loads the new checkpoint; the redelivered samples are in its dedup
  set, so they are dropped as duplicates and acked.
Acking before the checkpoint could lose a sample (acked, its update rolled back); training
before deduplicating against the checkpoint could train one twice. Dropped samples
(duplicates, stale) are acked at once: a duplicate's original is either committed or still
pending, and a stale sample only gets staler.

Versions: a restart publishes the checkpoint's adapter as a *new* version, one above both
the checkpoint's and the newest on the weights stream, because updates published after the
last checkpoint were rolled back and versions must only grow for every follower. Policy lag
is counted in steps along the lineage of the weights (`lineage.py`), so a restart ages no
pending sample.

A batch the process dies training is bisected on the next start (`bisect.py`): its samples
train in ever smaller isolation batches until the one that kills the learner dies alone and
is dead-lettered alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field

import torch
from peft.utils import get_peft_model_state_dict

from actors.tasks.base import Task, TaskPrompt
from learner.bisect import Suspects, isolation_batch
from learner.checkpoint import (
    LearnerState,
    clear_inflight,
    save_checkpoint,
    save_inflight,
    save_lineage,
)
from learner.composition import BatchPlan, plan_batch
from learner.config import LearnerConfig
from learner.dedup import TrainedIds, admit, dedup_floor
from learner.distributed import broadcast_samples
from learner.evaluate import heldout_pass_at_1
from learner.feeder import Feeder
from learner.lease import LearnerLease
from learner.lineage import Lineage
from learner.policy import Policy
from learner.telemetry import LearnerMetrics, RunLog
from learner.train import World, ppo_update
from learner.weights import WeightsChannel
from protocol.codec import encode
from protocol.consumer import Consumer, Delivery, end, repeat
from protocol.messages import Sample
from protocol.metrics import timed
from protocol.process import Runtime
from protocol.streams import SAMPLES

log = logging.getLogger(__name__)

FAULT_ENV = "GPO_LEARNER_FAULT"
"""Fault-test hook: `<point>:<step>` SIGKILLs the process at that point of that update
(points: `after_step`, `after_publish`, `after_checkpoint`); `train_sample:<sample id>`
SIGKILLs it in every update that trains that sample. Unset in real runs."""


@dataclass
class Parts:
    """What the loop works with, built by `main`."""

    cfg: LearnerConfig
    rt: Runtime
    policy: Policy
    optimizer: torch.optim.Optimizer
    consumer: Consumer
    feeder: Feeder
    task: Task
    tokenizer: object
    heldout: list[TaskPrompt]
    state: LearnerState
    trained: TrainedIds
    metrics: LearnerMetrics
    weights: WeightsChannel
    """Where adapter versions go (`newest`, `publish`): the weights stream."""
    runlog: RunLog
    lease: LearnerLease
    """The run's learner key, held (acquired by `main`) and renewed while the loop runs."""
    committed_step: int = 0
    """Step of the newest checkpoint on disk."""
    world: World = field(default_factory=World)
    lineage: Lineage = field(default_factory=Lineage)
    """The step each adapter version holds (`lineage.py`): policy lag is counted in steps."""
    buffer: list[Delivery] = field(default_factory=list)
    """Admitted deliveries not yet trained (pending in Redis), oldest first."""
    ready_since: float | None = None
    """Monotonic time since which the buffer has held `batch_size` samples (None: not yet)."""
    unacked: list[Delivery] = field(default_factory=list)
    """Trained deliveries whose checkpoint is not written yet (pending in Redis)."""
    max_tokens: int = 0
    """Longest sample admitted, in tokens (`max_sample_tokens`, or the model's context)."""
    shortfall_logged: bool = False
    """A batch short of one kind was logged once (the metric counts every one)."""
    suspects: Suspects = field(default_factory=Suspects)
    """Samples of a batch a previous incarnation died training (`bisect.py`)."""
    suspects_taken: bool = False
    """The suspects were taken back from Redis (once, at the first read)."""


async def run(p: Parts) -> int:
    """Train until SIGTERM; returns the exit code."""
    cfg, st = p.cfg, p.state
    await announce(p)
    if cfg.eval.every and st.step == 0:
        await p.feeder.top_up()  # the actors start on version 0 while it is scored
        await evaluate(p)  # the base policy's score: the "before" of every learning curve
    stop_leases = asyncio.Event()
    leases = asyncio.create_task(
        repeat(p.consumer.lease_interval, lambda: keep_leases(p), stop_leases),
        name="learner-leases",
    )
    lease = asyncio.create_task(
        repeat(p.lease.interval, p.lease.renew, stop_leases), name="learner-lease"
    )
    try:
        await train(p, leases, lease)
    except BaseException:
        # the keepers' own errors (a lost link) are this one's consequences: collect them
        stop_leases.set()
        for keeper in (leases, lease):
            keeper.cancel()
        await asyncio.gather(leases, lease, return_exceptions=True)
        raise
    await end(leases, stop_leases)
    await end(lease, stop_leases)
    await p.lease.release()
    broadcast_samples(p.world, None)
    return 0


async def train(p: Parts, leases: asyncio.Task, lease: asyncio.Task) -> None:
    """The update loop, until SIGTERM; then commit what was trained (the unread buffer stays
    pending for the next start)."""
    cfg, st = p.cfg, p.state
    while not p.rt.stop.is_set():
        for keeper in (leases, lease):
            if keeper.done():
                keeper.result()  # a failed keeper (or a lost lease) takes the process down
        # 1. keep the prompts backlog at its target
        await p.feeder.top_up()
        # 2. read ahead; drop duplicates and stale ones
        await take_samples(p)
        # 3. a batch of the configured composition (or drop surplus resets and read on)
        plan = await next_batch(p)
        if not plan.take:
            continue
        batch = pop_batch(p, plan)
        samples = [d.message for d in batch]
        # 4. PPO epochs, off the event loop (Redis and /metrics stay served), marked in
        # flight on disk: a death here has the next start bisect this batch
        entries = [d.entry_id for d in batch]
        await asyncio.to_thread(save_inflight, cfg.checkpoint_dir, p.suspects.marker(entries))
        fault_on_samples(samples)
        with timed() as update:
            broadcast_samples(p.world, samples)
            stats = await asyncio.to_thread(
                ppo_update, p.policy, p.optimizer, samples, cfg, st.step, p.world
            )
        secs = update.seconds
        await settle_suspects(p, entries)
        lags = [p.lineage.lag(st.step, s.policy_version) for s in samples]
        st.step += 1
        p.trained.add(samples, p.lineage)
        p.unacked += batch
        fault("after_step", st.step)
        # 5. publish the new adapter version
        await publish(p, st.version + 1)
        fault("after_publish", st.step)
        # 6. metrics and run log
        record(p, samples, stats, lags, secs, plan.shortfall)
        # 7. checkpoint (the commit point), then ack what it holds
        if st.step % cfg.checkpoint_every == 0:
            await commit(p)
        # 8. held-out evaluation
        if cfg.eval.every and st.step % cfg.eval.every == 0:
            await evaluate(p)
    await commit(p)


async def next_batch(p: Parts) -> BatchPlan:
    """Plan the next batch from the buffer (`learner.composition`); surplus resets the plan
    evicts are dropped, counted and acked here. While a bisection runs, only its isolation
    batches train (`isolate`)."""
    cfg = p.cfg
    if p.suspects.ids:
        return await isolate(p)
    now = time.monotonic()
    if len(p.buffer) < cfg.batch_size:
        p.ready_since = None
    elif p.ready_since is None:
        p.ready_since = now
    # producers wait once the backlog (our buffer and uncommitted samples) reaches its limit
    room = p.rt.redis_cfg.backlog_limit_for(SAMPLES) - len(p.unacked)
    bound = max(cfg.largest_batch, min(cfg.read_ahead, room))
    plan = plan_batch(
        [d.message.kind for d in p.buffer],
        cfg.batch_mode,
        cfg.batch_size,
        cfg.reset_fraction,
        full=len(p.buffer) >= bound,
        drained=p.ready_since is not None and now - p.ready_since >= cfg.compose_patience,
    )
    if plan.evict:
        evicted = [p.buffer[i] for i in plan.evict]
        gone = set(plan.evict)
        p.buffer = [d for i, d in enumerate(p.buffer) if i not in gone]
        p.metrics.surplus.inc(len(evicted))
        p.runlog.write(
            "surplus",
            step=p.state.step,
            version=p.state.version,
            dropped=len(evicted),
            **({"sample_ids": [d.message.id for d in evicted]} if cfg.log_sample_ids else {}),
        )
        await p.consumer.ack(evicted)
    return plan


def pop_batch(p: Parts, plan: BatchPlan) -> list[Delivery]:
    """Take the planned batch out of the buffer."""
    p.ready_since = None
    chosen = set(plan.take)
    batch = [d for i, d in enumerate(p.buffer) if i in chosen]
    p.buffer = [d for i, d in enumerate(p.buffer) if i not in chosen]
    return batch


def record(
    p: Parts,
    samples: list[Sample],
    stats: dict,
    lags: list[int],
    secs: float,
    shortfall: str | None,
) -> None:
    """One update's metrics and run-log record."""
    stats["reward_mean"] = sum(s.reward for s in samples) / len(samples)
    resets = sum(s.kind == "reset" for s in samples)
    p.metrics.update(stats, [s.kind for s in samples], lags, secs, shortfall)
    if shortfall and not p.shortfall_logged:
        log.warning(
            "update %d: too few %s samples for the configured composition (batch_mode %s, "
            "reset_fraction %g); the other kind filled the batch (counted in "
            "gpo_learner_batches_short_total)",
            p.state.step,
            shortfall,
            p.cfg.batch_mode,
            p.cfg.reset_fraction,
        )
        p.shortfall_logged = True
    ids = {"sample_ids": [s.id for s in samples]} if p.cfg.log_sample_ids else {}
    p.runlog.write(
        "update",
        step=p.state.step,
        version=p.state.version,
        seconds=secs,
        lag_mean=sum(lags) / len(lags),
        samples=len(samples),
        resets=resets,
        fresh=len(samples) - resets,
        reset_share=resets / len(samples),
        shortfall=shortfall,
        **stats,
        **ids,
    )


async def isolate(p: Parts) -> BatchPlan:
    """The bisection's next move (`bisect.py`): dead-letter the culprit once it is found,
    else train the next isolation batch of suspects."""
    buffered = [d.entry_id for d in p.buffer]
    culprit = p.suspects.culprit
    if culprit is None:
        return BatchPlan(take=isolation_batch(p.suspects, buffered))
    d = p.buffer.pop(buffered.index(culprit))
    reason = (
        f"crashed_learner: it was in every batch the learner died training "
        f"({p.suspects.deaths} deaths, bisected from a batch of {p.suspects.origin})"
    )
    log.error("sample %s kills the learner: dead-lettered (%s)", d.message.id, reason)
    await p.consumer.dead_letter(d.entry_id, encode(d.message), reason)
    p.suspects = Suspects()
    await asyncio.to_thread(clear_inflight, p.cfg.checkpoint_dir)
    return BatchPlan()


async def settle_suspects(p: Parts, trained: list[str]) -> None:
    """An update returned: its samples are cleared of suspicion; the marker keeps the
    suspects left, or goes."""
    p.suspects = p.suspects.cleared(trained)
    if p.suspects.ids:
        await asyncio.to_thread(save_inflight, p.cfg.checkpoint_dir, p.suspects.marker(None))
    else:
        await asyncio.to_thread(clear_inflight, p.cfg.checkpoint_dir)


async def take_samples(p: Parts) -> None:
    """Read ahead up to the buffer's bound (`read_ahead`) and re-judge the whole buffer:
    duplicates and samples that went stale meanwhile are dropped, counted and acked. The
    first read of a start that found suspects takes them back, ahead of anything else."""
    room = max(p.cfg.read_ahead - len(p.buffer), 0)
    if p.suspects.ids and not p.suspects_taken:
        p.suspects_taken = True
        read = await p.consumer.take_back(sorted(p.suspects.ids))
        log.warning(
            "the previous learner died training a batch (%d deaths, bisected from a batch of "
            "%d): training its %d pending samples in isolation batches",
            p.suspects.deaths,
            p.suspects.origin,
            len(read),
        )
    else:
        read = await p.consumer.read(count=min(room, p.cfg.read_count)) if room else []
    held = {d.entry_id for d in p.buffer + p.unacked}
    # An entry we already hold can come back through our own claim sweep; acking it as a
    # duplicate would ack an uncommitted sample, so it is simply ignored.
    pool = p.buffer + [d for d in read if d.entry_id not in held]
    verdict = admit(
        [d.message for d in pool],
        p.trained,
        set(),
        p.state.step,
        p.cfg.max_policy_lag,
        p.max_tokens,
        p.lineage,
    )
    for i in verdict.too_long:  # one bad sample costs one sample: it goes to the dead stream
        d = pool[i]
        reason = f"too_long: {len(d.message.token_ids)} tokens > {p.max_tokens}"
        await p.consumer.dead_letter(d.entry_id, encode(d.message), reason)
    p.buffer = [pool[i] for i in verdict.keep]
    if p.suspects.ids:  # suspects acked, dropped or dead meanwhile are suspected no more
        p.suspects = p.suspects.cleared(p.suspects.ids - {d.entry_id for d in p.buffer})
    p.metrics.duplicates.inc(len(verdict.duplicate))
    p.metrics.stale.inc(len(verdict.stale))
    dropped = [pool[i] for i in verdict.duplicate + verdict.stale]
    if verdict.stale and p.cfg.log_sample_ids:  # before the ack: a logged drop is never lost
        stale = [pool[i].message for i in verdict.stale]
        p.runlog.write(
            "stale",
            step=p.state.step,
            version=p.state.version,
            max_lag=p.cfg.max_policy_lag,
            sample_ids=[s.id for s in stale],
            # why: each one's policy version and its lag in steps along the lineage
            versions=[s.policy_version for s in stale],
            lags=[p.lineage.lag(p.state.step, s.policy_version) for s in stale],
        )
    if dropped:
        await p.consumer.ack(dropped)


async def keep_leases(p: Parts) -> None:
    """Keep every held entry (buffered or trained-but-uncommitted) from going idle past
    `claim_idle`: otherwise a claim sweep would redeliver it, and after `max_deliveries` the
    transport would dead-letter (and so ack) a sample whose update is not committed."""
    held = p.buffer + p.unacked
    if held:
        await p.consumer.extend_lease(held)


async def publish(p: Parts, version: int) -> None:
    """Export the adapter and broadcast it as `version` (never non-finite weights: the
    process stops instead, before anything leaves it)."""
    if not all(bool(torch.isfinite(q).all()) for q in p.policy.trainable()):
        raise RuntimeError("the policy's weights are not finite: refusing to publish them")
    blob, lora = p.policy.export_adapter()
    pointer = await p.weights.publish(version, blob, lora)
    p.state.version = version
    p.metrics.published(version, pointer.sha256)


async def announce(p: Parts) -> None:
    """On start: republish the resumed adapter above every version followers may hold."""
    stream_version = await p.weights.newest()
    p.runlog.write(
        "resume", step=p.state.step, version=p.state.version, stream_version=stream_version
    )
    if p.state.step > 0 or stream_version > 0:
        version = max(p.state.version, stream_version) + 1
        # durable before the version is: its samples' lag is counted from this step
        p.lineage = p.lineage.branch(version, p.state.step)
        await asyncio.to_thread(save_lineage, p.cfg.checkpoint_dir, p.lineage)
        await publish(p, version)
        log.info("resumed at step %d; republished as version %d", p.state.step, p.state.version)


async def commit(p: Parts) -> None:
    """Checkpoint everything trained so far, then ack its samples (see the module doc)."""
    if p.state.step == p.committed_step:
        return
    st = p.state
    p.trained.prune(dedup_floor(st.step, p.cfg.max_policy_lag))
    st.trained_ids = p.trained.all()
    st.feeder_epoch, st.feeder_index = p.feeder.epoch, p.feeder.index
    with timed(p.metrics.checkpoint_seconds):
        head = p.policy.value_head.state_dict() if p.policy.value_head is not None else None
        await asyncio.to_thread(
            save_checkpoint,
            p.cfg.checkpoint_dir,
            st,
            get_peft_model_state_dict(p.policy.model),
            head,
            p.optimizer.state_dict(),
            p.cfg.keep_checkpoints,
        )
    p.committed_step = st.step
    p.trained.commit()
    fault("after_checkpoint", st.step)
    await p.consumer.ack(p.unacked)
    p.unacked = []


async def evaluate(p: Parts) -> None:
    with timed() as evaluation:
        score = await asyncio.to_thread(
            heldout_pass_at_1,
            p.policy,
            p.task,
            p.tokenizer,
            p.heldout,
            p.cfg.eval.max_new_tokens,
            p.cfg.eval.batch,
            p.cfg.temperature,
            p.cfg.seed * 1_000_003 + p.state.step,
        )
    p.metrics.heldout.set(score)
    p.metrics.evaluations.inc()
    p.runlog.write(
        "eval",
        step=p.state.step,
        version=p.state.version,
        pass_at_1=score,
        n=len(p.heldout),
        seconds=evaluation.seconds,
    )
    log.info("step %d: held-out pass@1 %.3f (n=%d)", p.state.step, score, len(p.heldout))


def fault_on_samples(samples: list[Sample]) -> None:
    """SIGKILL this process when the fault-test hook names a sample of this update."""
    hook = os.environ.get(FAULT_ENV, "")
    if hook.startswith("train_sample:") and any(hook == f"train_sample:{s.id}" for s in samples):
        log.warning("fault hook %s: SIGKILL", hook)
        os.kill(os.getpid(), signal.SIGKILL)


def fault(point: str, step: int) -> None:
    """SIGKILL this process when the fault-test hook names this point and step."""
    if os.environ.get(FAULT_ENV) == f"{point}:{step}":
        log.warning("fault hook %s:%d: SIGKILL", point, step)
        os.kill(os.getpid(), signal.SIGKILL)
