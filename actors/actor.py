"""gpo-actor: the rollout actor process.

Takes critical-step reset requests (stream `resets`) before prompts (stream `prompts`), both
as consumer group `actors`; generates `n` rollouts per prompt and `reset.n` per reset from
its prefix with the current LoRA policy; scores and segments them; publishes Trajectory
messages on `trajectories`; acks. Between batches it loads each new adapter from `weights`,
and it takes no new work while its adapter trails the newest by more than
`max_policy_lag` versions. SIGTERM: the batch in flight is finished, published and acked,
then the process exits 0 (a second signal exits at once; unacked work is redelivered).

    gpo-actor --config run.toml [--redis-url URL] [--run-id ID] [--name NAME] [--metrics-port P]
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field

from actors.engines.base import Engine
from actors.engines.factory import EngineConfig
from actors.inference_process import inference_main
from actors.rollout import RolloutConfig, request_for, total_tokens, trajectories_for
from actors.tasks.base import Task
from actors.weights import WeightsSync
from protocol.adapters import FetchConfig
from protocol.codec import DEFAULT_LIMITS, CodecLimits, encode
from protocol.consumer import Consumer, Delivery
from protocol.messages import Prompt, ResetRequest
from protocol.metrics import Metrics, timed
from protocol.process import Runtime
from protocol.producer import Producer
from protocol.streams import GROUP_ACTORS, PROMPTS, RESETS, TRAJECTORIES

log = logging.getLogger("gpo.actor")


@dataclass(frozen=True, slots=True)
class ActorConfig:
    """TOML section `[actor]`."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    """The inference engine and base model (`[actor.engine]`)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling and step segmentation (`[actor.rollout]`)."""
    task: str = "arithmetic"
    """Task plugin: a built-in name or `package.module:Class`."""
    task_options: dict = field(default_factory=dict)
    """Keyword options of the task class."""
    batch_messages: int = 8
    """Most prompts or reset requests generated together in one engine batch."""
    max_policy_lag: int = 2
    """Take no new work while the loaded adapter trails the newest by more than this many versions."""
    lag_poll_seconds: float = 0.5
    """While lagging, seconds between retries to catch up."""
    fetch: FetchConfig = field(default_factory=FetchConfig)
    """How adapter versions are read from Redis and shared on the host (`[actor.fetch]`)."""
    max_reset_n: int = DEFAULT_LIMITS.max_reset_n
    """Most rollouts one reset request may ask for; a request for more is dead-lettered
    (`bad_value`). Keep it at least `estimator.n_reset`."""

    def __post_init__(self) -> None:
        if self.batch_messages < 1 or self.max_policy_lag < 0 or self.max_reset_n < 1:
            raise ValueError(
                "actor.batch_messages and actor.max_reset_n must be >= 1 "
                "and actor.max_policy_lag >= 0"
            )


class ActorMetrics:
    def __init__(self, m: Metrics):
        self.tokens = m.counter("generated_tokens_total", "Completion tokens generated.")
        self.generate_seconds = m.histogram("generate_seconds", "Wall time of one engine batch.")
        self.trajectories = m.counter("trajectories_total", "Trajectories published.", ("kind",))
        self.reward = m.histogram(
            "reward",
            "Verifier reward of published trajectories.",
            ("kind",),
            buckets=(0.0, 0.25, 0.5, 0.75, 1.0),
        )
        self.lagging_seconds = m.counter(
            "policy_lag_wait_seconds_total", "Time spent refusing work while lagging."
        )
        self.wrong_task = m.counter(
            "wrong_task_total", "Messages for a task this actor does not serve."
        )


async def next_work(
    resets: Consumer, prompts: Consumer, limit: int, block_ms: int
) -> list[tuple[Consumer, Delivery]]:
    """Reset requests first (never blocking on them), then prompts to fill the batch.

    A redelivered message (its last holder died or failed on it) goes first, and alone:
    after a restart the own pending messages are served before any new work, and a message
    that kills the actor every time reaches the dead stream alone instead of taking the
    messages batched with it along (RELIABILITY.md tests 3 and 10)."""
    for consumer in (resets, prompts):
        if again := await consumer.redelivered():
            return [(consumer, d) for d in again]
    got = [(resets, d) for d in await resets.read_new(count=limit, block_ms=0)]
    if len(got) < limit:
        wait = 0 if got else block_ms
        more = await prompts.read_new(count=limit - len(got), block_ms=wait)
        got += [(prompts, d) for d in more]
    return got


async def rollout(
    engine: Engine,
    task: Task,
    tokenizer,
    cfg: ActorConfig,
    name: str,
    work: list[Prompt | ResetRequest],
):
    """One engine batch for all work messages; their trajectories in order."""
    with timed() as generation:
        results = await engine.generate([request_for(w, cfg.rollout) for w in work])
    seconds = generation.seconds
    trajectories = []
    for w, result in zip(work, results, strict=True):
        trajectories += trajectories_for(w, result, task, tokenizer, cfg.rollout, name, seconds)
    return trajectories, seconds


async def run(cfg: ActorConfig, rt: Runtime, engine: Engine, task: Task, tokenizer) -> int:
    """The actor loop: sync weights, check lag, take work, generate, publish, ack."""
    limits = CodecLimits(
        max_bytes=rt.redis_cfg.max_message_bytes,
        vocab_size=len(tokenizer),
        max_reset_n=cfg.max_reset_n,
    )
    prompts = Consumer(
        rt.link, rt.keys, PROMPTS, GROUP_ACTORS, rt.name, rt.redis_cfg, rt.transport, limits
    )
    resets = Consumer(
        rt.link, rt.keys, RESETS, GROUP_ACTORS, rt.name, rt.redis_cfg, rt.transport, limits
    )
    producer = Producer(rt.link, rt.keys, rt.redis_cfg, rt.transport, rt.stop)
    weights = WeightsSync(rt.link, rt.keys, engine, rt.metrics, cfg.fetch)
    m = ActorMetrics(rt.metrics)
    await prompts.ensure_group()
    await resets.ensure_group()
    log.info("serving task %s as %s", task.name, rt.name)
    while not rt.stop.is_set():
        # 1. a new adapter is loaded only here, between batches
        await weights.sync()
        # 2. too far behind the learner: take no new work until caught up
        if weights.lag() > cfg.max_policy_lag:
            await rt.sleep(cfg.lag_poll_seconds)
            m.lagging_seconds.inc(cfg.lag_poll_seconds)
            continue
        # 3. resets before prompts
        batch = await next_work(resets, prompts, cfg.batch_messages, rt.redis_cfg.block_ms)
        batch = await drop_wrong_task(batch, task.name, m)
        if not batch:
            continue
        # 4. generate, score, segment, 5. publish; leases kept alive however long it takes
        # (publishing waits for room in `trajectories` as long as the estimators lag)
        async with contextlib.AsyncExitStack() as stack:
            for consumer in (resets, prompts):
                await stack.enter_async_context(
                    consumer.lease([d for c, d in batch if c is consumer])
                )
            trajectories, seconds = await rollout(
                engine, task, tokenizer, cfg, rt.name, [d.message for _, d in batch]
            )
            await producer.send(TRAJECTORIES, trajectories)
        # 6. ack: a crash between publish and ack republishes the same ids (deduplicated)
        for consumer in (resets, prompts):
            await consumer.ack([d for c, d in batch if c is consumer])
        # 7. metrics
        m.generate_seconds.observe(seconds)
        m.tokens.inc(total_tokens(trajectories))
        for t in trajectories:
            m.trajectories.labels(t.kind).inc()
            m.reward.labels(t.kind).observe(t.reward)
    log.info("stopping: in-flight work finished and acknowledged")
    return 0


async def drop_wrong_task(batch, task_name: str, m: ActorMetrics):
    """Work for another task cannot be served here: dead-letter it with the reason."""
    keep = []
    for consumer, d in batch:
        if d.message.task == task_name:
            keep.append((consumer, d))
        else:
            m.wrong_task.inc()
            await consumer.dead_letter(
                d.entry_id, encode(d.message), f"wrong_task: {d.message.task!r} != {task_name!r}"
            )
    return keep


def main(argv: list[str] | None = None) -> int:
    return inference_main("actor", __doc__, ActorConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
