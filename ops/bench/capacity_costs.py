"""What each stream costs Redis per message, measured on loopback (`gpo bench capacity`,
part 1): a private redis-server takes a number of messages of each work stream at a
deployment's sizes through the project's client, produced in batches as the processes batch
them, read by one consumer, acked and trimmed. From the server's INFO before and after: CPU
(user + system), commands (commandstats, the scripts' inner commands included), bytes in and
out, and memory per waiting entry (after the XADDs, before the reads). Adapter fetches are
measured the same way, per MiB, and a waiting consumer per second.

The model of these costs is ops/bench/capacity_model.py; the simulated check that tests it,
ops/bench/capacity_sim.py.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from dataclasses import dataclass

import numpy as np

from actors.engines.base import Completion
from actors.engines.scripted import BAD, GOOD, step_spans
from ops.bench.broadcast import safetensors_blob
from ops.bench.capacity_model import MIB, STREAMS, AdapterCost, Load, MessageCost
from ops.bench.transport import server_cpu_seconds
from protocol.adapters import fetch_adapter, publish_adapter
from protocol.codec import encode
from protocol.config import RedisConfig
from protocol.consumer import Consumer
from protocol.messages import Message, Prompt, ResetRequest, Sample, Trajectory
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.streams import PROMPTS, RESETS, SAMPLES, TRAJECTORIES, Keys, Link

VOCAB = 32_000
STEP_TOKENS = 32
BATCH_MESSAGES = 8
"""`actor.batch_messages` and `estimator.batch_messages`: messages read per batch."""
BATCHING = {
    PROMPTS: (64, BATCH_MESSAGES),
    TRAJECTORIES: (4 * BATCH_MESSAGES, BATCH_MESSAGES),
    RESETS: (2, BATCH_MESSAGES),
    SAMPLES: (16, 64),
}
"""Per stream, (messages per send, messages per read) as the processes batch them by
default: the feeder tops prompts up in large batches and actors read 8; an actor publishes
its batch's 32 trajectories at once and estimators read 8; an estimator publishes a batch's
samples (about 16) and its few reset requests; the learner reads 64 (`read_count`)."""
IDLE_SECONDS = 6.0


@dataclass
class Shapes:
    """Token sizes of a deployment's messages."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def kept_tokens(self) -> int:
        """Tokens a reset keeps: the prompt and half the completion."""
        return self.prompt_tokens + self.completion_tokens // 2


class Factory:
    """Valid messages of each type at given sizes, random content, unique ids."""

    def __init__(self, shapes: Shapes, run: str, seed: int = 0):
        self.s, self.run = shapes, run
        self.rng = np.random.default_rng(seed)
        self.count = itertools.count()

    def _ids(self, n: int) -> np.ndarray:
        return self.rng.integers(0, VOCAB, n, dtype=np.int32)

    def _spans(self, n: int) -> list[tuple[int, int]]:
        return [(k, min(k + STEP_TOKENS, n)) for k in range(0, n, STEP_TOKENS)]

    def prompt(self) -> Prompt:
        i = next(self.count)
        return Prompt(
            id=f"train:0:{i}",
            run=self.run,
            ts=time.time(),
            task="bench",
            text="x" * (4 * self.s.prompt_tokens),
            token_ids=self._ids(self.s.prompt_tokens),
            answer="42",
            epoch=0,
        )

    def trajectory(
        self,
        prompt_id: str,
        reset: ResetRequest | None = None,
        k: int = 0,
        completion: Completion | None = None,
    ) -> Trajectory:
        """A trajectory of the shape's sizes; with `completion` (a scripted engine's), its
        tokens, logprobs, steps and reward instead of random ones."""
        n = self.s.completion_tokens
        prefix = self.s.prompt_tokens if reset is None else self.s.kept_tokens
        if completion is None:
            ids, logprobs = self._ids(n), -self.rng.random(n, dtype=np.float32)
            spans, reward = self._spans(n), float(self.rng.integers(0, 2))
        else:
            ids, logprobs = completion.token_ids, completion.logprobs
            spans = step_spans(completion.token_ids)  # EOS joins the last step: a partition
            spans[-1:] = [(spans[-1][0] if spans else 0, len(ids))]
            verdicts = [t for t in completion.token_ids if t in (GOOD, BAD)]
            reward = float(bool(verdicts) and verdicts[-1] == GOOD)
        return Trajectory(
            id=f"{prompt_id if reset is None else reset.id}/{k}",
            run=self.run,
            ts=time.time(),
            prompt_id=prompt_id,
            task="bench",
            answer="42",
            kind="fresh" if reset is None else "reset",
            parent_id=None if reset is None else reset.trajectory_id,
            reset_step=None if reset is None else reset.critical_step,
            reset_value=None if reset is None else reset.value,
            prompt_len=self.s.prompt_tokens,
            prefix_token_ids=self._ids(prefix),
            completion_token_ids=ids,
            logprobs=logprobs,
            step_spans=spans,
            reward=reward,
            policy_version=1,
            actor="sim",
            gen_seconds=1.0,
        )

    def reset_request(self, traj: Trajectory, n: int = 4) -> ResetRequest:
        steps = len(traj.step_spans)
        return ResetRequest(
            id=f"reset:{traj.id}:{next(self.count)}",
            run=self.run,
            ts=time.time(),
            trajectory_id=traj.id,
            prompt_id=traj.prompt_id,
            task="bench",
            answer="42",
            critical_step=steps // 2,
            prompt_len=self.s.prompt_tokens,
            prefix_token_ids=self._ids(self.s.kept_tokens),
            step_values=self.rng.random(steps + 1, dtype=np.float32),
            advantages=self.rng.random(steps, dtype=np.float32) - 0.5,
            value=0.5,
            n=n,
            policy_version=1,
            selection="advantage",
        )

    def sample(self, traj: Trajectory, kind: str = "fresh") -> Sample:
        prefix = len(traj.prefix_token_ids)
        n = prefix + len(traj.completion_token_ids)
        mask = np.zeros(n, dtype=np.int32)
        mask[prefix:] = 1
        logprobs = np.zeros(n, dtype=np.float32)
        logprobs[prefix:] = traj.logprobs
        return Sample(
            id=f"{traj.id}:{kind}:{next(self.count)}",
            run=self.run,
            ts=time.time(),
            prompt_id=traj.prompt_id,
            kind=kind,
            token_ids=np.concatenate([traj.prefix_token_ids, traj.completion_token_ids]),
            loss_mask=mask,
            logprobs=logprobs,
            advantages=(self.rng.random(n, dtype=np.float32) - 0.5) * mask,
            returns=[],
            step_values=self.rng.random(len(traj.step_spans) + 1, dtype=np.float32),
            reward=traj.reward,
            policy_version=1,
            baseline_value=0.5 if kind == "reset" else 0.0,
            baseline_count=4 if kind == "reset" else 0,
        )

    def of_stream(self, stream: str) -> Message:
        if stream == PROMPTS:
            return self.prompt()
        traj = self.trajectory(f"train:0:{next(self.count)}")
        return {
            TRAJECTORIES: traj,
            RESETS: self.reset_request(traj),
            SAMPLES: self.sample(traj),
        }[stream]


# ---------------------------------------------------------------- the server's counters


@dataclass(frozen=True)
class Snapshot:
    """A Redis server's cumulative counters at one moment."""

    cpu: float
    commands: int
    bytes_in: int
    bytes_out: int
    memory: int

    def __sub__(self, other: Snapshot) -> Snapshot:
        return Snapshot(
            self.cpu - other.cpu,
            self.commands - other.commands,
            self.bytes_in - other.bytes_in,
            self.bytes_out - other.bytes_out,
            self.memory - other.memory,
        )


def snapshot(client) -> Snapshot:
    """From a synchronous redis-py client of one node: INFO cpu, stats, commandstats, memory.
    INFO's own calls are left out of the commands."""
    stats = client.info("stats")
    commands = client.info("commandstats")
    return Snapshot(
        cpu=server_cpu_seconds(client),
        commands=sum(int(v["calls"]) for k, v in commands.items() if k not in ("cmdstat_info",)),
        bytes_in=int(stats["total_net_input_bytes"]),
        bytes_out=int(stats["total_net_output_bytes"]),
        memory=int(client.info("memory")["used_memory"]),
    )


def load_of(delta: Snapshot, seconds: float) -> Load:
    return Load(
        cpu=delta.cpu / seconds,
        commands_per_s=delta.commands / seconds,
        bytes_in_per_s=delta.bytes_in / seconds,
        bytes_out_per_s=delta.bytes_out / seconds,
        memory=float(delta.memory),
    )


def _cfg(url: str, run: str, **kw) -> RedisConfig:
    return RedisConfig(
        url=url, run_id=run, socket_timeout=30, block_ms=200, backlog_limit=10**9, **kw
    )


# ---------------------------------------------------------------- 1. per message


async def measure_stream(url: str, node, stream: str, shapes: Shapes, messages: int) -> MessageCost:
    """One stream's cost per message: `messages` produced, read, acked and trimmed by the
    project's client on a fresh run, batched as the processes batch them (`BATCHING`); the
    server's counters before and after."""
    run = f"cap-{stream}-{uuid.uuid4().hex[:6]}"
    factory = Factory(shapes, run)
    msgs = [factory.of_stream(stream) for _ in range(messages)]
    batch, read = BATCHING[stream]
    cfg = _cfg(url, run)
    tm = TransportMetrics(Metrics("bench"))
    link, keys = Link(cfg, tm), Keys(run)
    consumer = Consumer(link, keys, stream, "g", "c0", cfg, tm)
    await consumer.ensure_group()
    producer = Producer(link, keys, cfg, tm)
    before = await asyncio.to_thread(snapshot, node)
    for i in range(0, messages, batch):
        await producer.send(stream, msgs[i : i + batch])
    waiting = await asyncio.to_thread(snapshot, node)
    done = 0
    while done < messages:
        got = await consumer.read(count=read, block_ms=200)
        done += await consumer.ack(got)
    await consumer.trim()
    after = await asyncio.to_thread(snapshot, node)
    await link.close()
    delta = after - before
    return MessageCost(
        cpu_us=delta.cpu / messages * 1e6,
        commands=delta.commands / messages,
        bytes_in=delta.bytes_in / messages,
        bytes_out=delta.bytes_out / messages,
        memory=(waiting - before).memory / messages,
        size=len(encode(msgs[0])),
    )


async def measure_adapter(url: str, node, mib: int, fetches: int = 4) -> AdapterCost:
    """Server CPU and bytes out per MiB of adapter fetched (`fetches` whole fetches)."""
    run = f"cap-adapter-{uuid.uuid4().hex[:6]}"
    cfg = _cfg(url, run)
    link = Link(cfg)
    pointer = await publish_adapter(link, Keys(run), 1, safetensors_blob(mib), {"r": 8}, "sim")
    before = await asyncio.to_thread(snapshot, node)
    for _ in range(fetches):
        await fetch_adapter(link, pointer)
    delta = await asyncio.to_thread(snapshot, node) - before
    await link.close()
    fetched = fetches * pointer.size / MIB
    return AdapterCost(delta.cpu / fetched * 1e6, delta.bytes_out / fetched)


async def measure_idle(url: str, node, consumers: int = 32, seconds: float = IDLE_SECONDS) -> Load:
    """What one consumer waiting on an empty stream costs per second: its blocking reads
    (`redis.block_ms`) and pending checks, with the default settings."""
    run = f"cap-idle-{uuid.uuid4().hex[:6]}"
    cfg = RedisConfig(url=url, run_id=run)
    link, keys = Link(cfg), Keys(run)
    tm = TransportMetrics(Metrics("bench"))
    group = [Consumer(link, keys, PROMPTS, "g", f"c{i}", cfg, tm) for i in range(consumers)]
    await group[0].ensure_group()
    stop = asyncio.Event()

    async def wait(c: Consumer) -> None:
        while not stop.is_set():
            await c.read(count=1)

    tasks = [asyncio.create_task(wait(c)) for c in group]
    await asyncio.sleep(0.5)
    before = await asyncio.to_thread(snapshot, node)
    await asyncio.sleep(seconds)
    delta = await asyncio.to_thread(snapshot, node) - before
    stop.set()
    await asyncio.gather(*tasks)
    await link.close()
    load = load_of(delta, seconds * consumers)
    return Load(load.cpu, load.commands_per_s, load.bytes_in_per_s, load.bytes_out_per_s, 0.0)


@dataclass
class Costs:
    """What `gpo bench capacity` measured at one set of message sizes."""

    streams: dict[str, MessageCost]
    adapter: AdapterCost
    idle: Load


async def measure_costs(url: str, node, shapes: Shapes, messages: int) -> Costs:
    streams = {s: await measure_stream(url, node, s, shapes, messages) for s in STREAMS}
    return Costs(streams, await measure_adapter(url, node, 16), await measure_idle(url, node))
