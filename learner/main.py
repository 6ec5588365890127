"""gpo-learner: trains the LoRA policy with PPO on GPO samples and broadcasts each version.

    gpo-learner --config run.toml [--redis-url URL] [--run-id ID] [--name NAME]
                [--metrics-port PORT] [--set learner.FIELD=VALUE ...]
    torchrun --nproc-per-node 2 -m learner.main --config run.toml    # data parallel

Reads the `[learner]` section (see `learner.config.LearnerConfig`), resumes from the latest
checkpoint in `checkpoint_dir` if there is one, then runs `learner.loop.run`. The consumer
name defaults to `learner` (not host+pid) so that a restarted learner drains its own
pending samples at once instead of waiting for `claim_idle`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from actors.tasks.base import load_task, with_tokenizer
from learner.bisect import Suspects, delivery_allowance
from learner.checkpoint import LearnerState, load_inflight, load_latest, load_lineage
from learner.config import LearnerConfig, check_samples_room
from learner.dedup import TrainedIds
from learner.distributed import broadcast_samples, init_world, rank_device
from learner.feeder import Feeder
from learner.lease import LearnerLease
from learner.loop import Parts, run
from learner.policy import Policy, build_policy, load_tokenizer
from learner.telemetry import LearnerMetrics, RunLog
from learner.train import World, make_optimizer, ppo_update
from learner.weights import WeightsChannel
from protocol.adapters import AdapterMetrics
from protocol.codec import CodecLimits
from protocol.config import RedisConfig
from protocol.consumer import Consumer
from protocol.process import Runtime, UserError, cli_entry, common_parser, load_config, run_process
from protocol.producer import Producer
from protocol.streams import GROUP_LEARNER, SAMPLES


def build_training(
    cfg: LearnerConfig, world: World
) -> tuple[Policy, torch.optim.Optimizer, LearnerState]:
    """Policy, optimizer and state, resumed from the latest checkpoint when there is one."""
    if not cfg.model or not Path(cfg.model).exists():
        raise UserError(f"learner.model {cfg.model!r} is not a model directory")
    policy = build_policy(cfg, rank_device(cfg.device, world))
    optimizer = make_optimizer(policy, cfg)
    ckpt = load_latest(cfg.checkpoint_dir)
    if ckpt is None:
        return policy, optimizer, LearnerState()
    policy.load_adapter_state(ckpt.adapter)
    if policy.value_head is not None and ckpt.value_head is not None:
        policy.value_head.load_state_dict(ckpt.value_head)
    optimizer.load_state_dict(ckpt.optimizer)
    return policy, optimizer, ckpt.state


async def learner(
    cfg: LearnerConfig, redis_cfg: RedisConfig, args: argparse.Namespace, world: World
) -> int:
    policy, optimizer, state = build_training(cfg, world)
    tokenizer = load_tokenizer(cfg)
    try:
        task = with_tokenizer(load_task(cfg.task, **cfg.task_options), tokenizer)
    except ValueError as e:
        raise UserError(str(e)) from None
    async with Runtime(
        "learner", redis_cfg, args.name or "learner", args.metrics_port, args.metrics_host
    ) as rt:
        # one learner per run: before anything is read or published
        lease = LearnerLease(rt.link, rt.keys, rt.name, cfg.lease_seconds)
        await lease.acquire()
        limits = CodecLimits(
            max_bytes=redis_cfg.max_message_bytes, vocab_size=policy.model.config.vocab_size
        )
        # a bisection's deaths redeliver held samples on top of `max_deliveries` (bisect.py)
        allowance = delivery_allowance(cfg.largest_batch)
        samples_cfg = replace(redis_cfg, max_deliveries=redis_cfg.max_deliveries + allowance)
        consumer = Consumer(
            rt.link, rt.keys, SAMPLES, GROUP_LEARNER, rt.name, samples_cfg, rt.transport, limits
        )
        await consumer.ensure_group()
        feeder = Feeder(
            Producer(rt.link, rt.keys, redis_cfg, rt.transport),
            task.train_prompts(),
            lambda text: list(tokenizer(text)["input_ids"]),
            task.name,
            rt.keys.run_id,
            cfg.feeder.backlog_target,
            cfg.feeder.backlog_bound,
            cfg.seed,
            state.feeder_epoch,
            state.feeder_index,
        )
        parts = Parts(
            cfg=cfg,
            rt=rt,
            policy=policy,
            optimizer=optimizer,
            consumer=consumer,
            feeder=feeder,
            task=task,
            tokenizer=tokenizer,
            heldout=list(task.heldout_prompts()[: cfg.eval.count]),
            state=state,
            trained=TrainedIds(committed=dict(state.trained_ids)),
            metrics=LearnerMetrics(rt.metrics),
            weights=WeightsChannel(
                rt.link, rt.keys, cfg.base_id, cfg.adapter_keep, AdapterMetrics(rt.metrics)
            ),
            runlog=RunLog(Path(cfg.checkpoint_dir) / "run_log.jsonl", cfg.tensorboard_dir),
            lease=lease,
            committed_step=state.step,
            world=world,
            lineage=load_lineage(cfg.checkpoint_dir),
            suspects=Suspects.from_marker(load_inflight(cfg.checkpoint_dir)),
            max_tokens=cfg.max_sample_tokens or context_length(policy),
        )
        return await run(parts)


def context_length(policy) -> int:
    """The longest sequence the base model takes (0: unknown, no cap)."""
    return int(getattr(policy.model.config, "max_position_embeddings", 0) or 0)


def follow(cfg: LearnerConfig, world: World) -> int:
    """Ranks > 0: train on every batch rank 0 broadcasts, until it says stop."""
    policy, optimizer, state = build_training(cfg, world)
    step = state.step
    while (samples := broadcast_samples(world, None)) is not None:
        ppo_update(policy, optimizer, samples, cfg, step, world)
        step += 1
    return 0


def main(argv: list[str] | None = None) -> int:
    def parse_and_run() -> int:
        parser = common_parser("gpo-learner", __doc__)
        args = parser.parse_args(argv)
        cfg, redis_cfg = load_config(args, "learner", LearnerConfig)
        check_samples_room(cfg, redis_cfg)
        torch.manual_seed(cfg.seed)
        world = init_world(cfg.device)
        if world.rank > 0:
            return follow(cfg, world)
        return run_process(learner(cfg, redis_cfg, args, world), "learner", args.log_level)

    return cli_entry(parse_and_run)


if __name__ == "__main__":
    sys.exit(main())
