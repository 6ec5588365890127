"""The learner loop (learner/loop.py) on the in-memory transport: no Redis, no processes.

Samples are put on the fake `samples` stream as estimators would; the loop runs until it
made the wanted updates, then stops as on SIGTERM (commit, ack). What is checked is the
loop's own contract: every admitted sample trained once, acks only after the checkpoint
that holds them, duplicates and stale samples dropped and acked, versions published in
order, and a batch marked in flight at start trained in isolation batches."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from actors.tasks.base import load_task
from learner.bisect import Suspects
from learner.checkpoint import LearnerState, save_inflight
from learner.dedup import TrainedIds
from learner.feeder import Feeder
from learner.loop import Parts, run
from learner.policy import build_policy, load_tokenizer
from learner.telemetry import LearnerMetrics, RunLog
from learner.train import make_optimizer
from protocol.codec import encode
from protocol.config import RedisConfig
from protocol.metrics import Metrics
from protocol.streams import GROUP_LEARNER, PROMPTS, SAMPLES
from tests.support.learner import make_sample, tiny_config, tiny_model
from tests.support.memory_transport import MemoryConsumer, MemoryProducer, MemoryRedis


class MemoryWeights:
    """The weights channel: versions published, in order."""

    def __init__(self):
        self.versions: list[int] = []

    async def newest(self) -> int:
        return self.versions[-1] if self.versions else 0

    async def publish(self, version: int, blob: bytes, lora: dict):
        self.versions.append(version)
        return SimpleNamespace(version=version, sha256=hashlib.sha256(blob).hexdigest())


class HeldLease:
    interval = 60.0

    async def renew(self) -> None:
        pass

    async def release(self) -> None:
        pass


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def parts(tmp: Path, model: str, redis: MemoryRedis, **overrides) -> Parts:
    fields = dict(batch_size=4, batch_mode="share", reset_fraction=0.0, read_ahead=8)
    fields |= dict(checkpoint_every=2, eval={"every": 0}, log_sample_ids=True, compose_patience=0.2)
    cfg = tiny_config(model, checkpoint_dir=str(tmp / "ckpt"), **(fields | overrides))
    redis_cfg = RedisConfig(url="redis://127.0.0.1:1", run_id="t", block_ms=50, trim_interval=0)
    policy = build_policy(cfg)
    task = load_task(cfg.task, **cfg.task_options)
    tokenizer = load_tokenizer(cfg)
    metrics = Metrics("learner")
    return Parts(
        cfg=cfg,
        rt=SimpleNamespace(stop=asyncio.Event(), redis_cfg=redis_cfg),
        policy=policy,
        optimizer=make_optimizer(policy, cfg),
        consumer=MemoryConsumer(redis, SAMPLES, GROUP_LEARNER, "learner", redis_cfg),
        feeder=Feeder(
            MemoryProducer(redis, redis_cfg),
            task.train_prompts(),
            lambda text: list(tokenizer(text)["input_ids"]),
            task.name,
            "t",
            4,
            8,
            0,
        ),
        task=task,
        tokenizer=tokenizer,
        heldout=[],
        state=LearnerState(),
        trained=TrainedIds(),
        metrics=LearnerMetrics(metrics),
        weights=MemoryWeights(),
        runlog=RunLog(tmp / "ckpt" / "run_log.jsonl"),
        lease=HeldLease(),
    )


def train_until(p: Parts, updates: int, timeout: float = 60.0) -> None:
    """Run the loop until it made `updates` updates, then stop it as SIGTERM does."""

    async def go():
        async def stopper():
            while p.state.step < updates:
                await asyncio.sleep(0.01)
            p.rt.stop.set()

        watcher = asyncio.create_task(stopper())
        await asyncio.wait_for(run(p), timeout)
        await watcher

    asyncio.run(go())


def records(p: Parts, event: str) -> list[dict]:
    lines = (Path(p.cfg.checkpoint_dir) / "run_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def put(redis: MemoryRedis, samples) -> None:
    redis.add(SAMPLES, [encode(s) for s in samples])


def test_every_sample_is_trained_once_and_acked_after_its_checkpoint(tmp_path, model):
    redis = MemoryRedis()
    p = parts(tmp_path, model, redis)
    put(redis, [make_sample(f"s{i}", seed=i, reward=float(i % 2)) for i in range(8)])
    train_until(p, 2)
    updates = records(p, "update")
    assert [u["step"] for u in updates] == [1, 2]
    assert sorted(i for u in updates for i in u["sample_ids"]) == [f"s{i}" for i in range(8)]
    assert p.weights.versions == [1, 2]
    stream = redis.stream(SAMPLES)
    assert stream.acked == 8 and not stream.groups[GROUP_LEARNER].pending
    assert (tmp_path / "ckpt" / "latest").read_text() == "step-000002"
    # the feeder kept the prompts backlog at its target
    assert len(redis.stream(PROMPTS).entries) == 4


def test_trained_samples_stay_pending_until_the_checkpoint(tmp_path, model):
    redis = MemoryRedis()
    p = parts(tmp_path, model, redis, checkpoint_every=4)
    put(redis, [make_sample(f"s{i}", seed=i) for i in range(12)])

    async def go():
        task = asyncio.create_task(run(p))
        while p.state.step < 1:
            await asyncio.sleep(0.01)
        # one update done, no checkpoint yet: its 4 samples are held, none acked
        assert redis.stream(SAMPLES).acked == 0 and len(p.unacked) == 4
        p.rt.stop.set()
        await asyncio.wait_for(task, 30)

    asyncio.run(go())
    assert redis.stream(SAMPLES).acked == 4 * p.state.step  # the SIGTERM commit acked them


def test_duplicates_and_stale_samples_are_dropped_and_acked(tmp_path, model):
    redis = MemoryRedis()
    p = parts(tmp_path, model, redis, max_policy_lag=1)
    first = [make_sample(f"s{i}", seed=i) for i in range(4)]
    put(redis, first)
    train_until(p, 1)
    p.rt.stop.clear()
    # a duplicate of s0, two samples of version 0 (two steps back once step 2 is reached)
    put(redis, [first[0], *(make_sample(f"n{i}", seed=10 + i, version=1) for i in range(4))])
    train_until(p, 2)
    put(redis, [make_sample(f"old{i}", seed=20 + i, version=0) for i in range(2)])
    put(redis, [make_sample(f"m{i}", seed=30 + i, version=2) for i in range(4)])
    p.rt.stop.clear()
    train_until(p, 3)
    trained = [i for u in records(p, "update") for i in u["sample_ids"]]
    assert sorted(trained) == sorted(
        [f"s{i}" for i in range(4)] + [f"n{i}" for i in range(4)] + [f"m{i}" for i in range(4)]
    )
    stale = [i for r in records(p, "stale") for i in r["sample_ids"]]
    assert sorted(stale) == ["old0", "old1"]
    assert (
        redis.stream(SAMPLES).acked == 15
        and not redis.stream(SAMPLES).groups[GROUP_LEARNER].pending
    )


def test_a_batch_marked_in_flight_at_start_trains_in_isolation_batches(tmp_path, model):
    redis = MemoryRedis()
    put(redis, [make_sample(f"s{i}", seed=i) for i in range(8)])
    # a previous incarnation read the first four and died training them
    dead = MemoryConsumer(
        redis, SAMPLES, GROUP_LEARNER, "learner", RedisConfig(url="redis://x:1", run_id="t")
    )
    held = asyncio.run(dead.read_new(count=4))
    save_inflight(tmp_path / "ckpt", Suspects().marker([d.entry_id for d in held]))
    p = parts(tmp_path, model, redis)
    from learner.checkpoint import load_inflight

    p.suspects = Suspects.from_marker(load_inflight(p.cfg.checkpoint_dir))
    train_until(p, 4)
    sizes = [u["samples"] for u in records(p, "update")]
    assert sizes[:3] == [2, 1, 1] and sizes[3] == 4  # halves, then halves of the rest
    assert not (tmp_path / "ckpt" / "inflight.json").exists()
    trained = sorted(i for u in records(p, "update") for i in u["sample_ids"])
    assert trained == [f"s{i}" for i in range(8)]
