"""Benchmark: what each stream costs Redis, the capacity model, and a simulated check of it.

    gpo bench capacity [--actors 64] [--tokens-per-s 3000] [--completion-tokens 1024]
                       [--prompt-tokens 256] [--adapter-mib 300] [--update-seconds 60]
                       [--sim-actors 64] [--sim-tokens-per-s 1500] [--sim-seconds 20]
                       [--no-cluster] [--write-results]

1. Per message, on loopback (`measure_stream`): a private redis-server takes `--messages`
   messages of each work stream at the deployment's sizes, through the project's client:
   produced in batches, read by one consumer, acked, trimmed. From the server's INFO before
   and after: CPU (user + system), commands (commandstats, the scripts' inner commands
   included), bytes in and out, and memory per waiting entry (after the XADDs, before the
   reads). Adapter fetches are measured the same way, per MiB.
2. The model (`ops/bench/capacity_model.py`) at the deployment given on the command line:
   message rates, Redis load, and the most actors one Redis and a cluster carry.
3. A simulated check (`simulate`): `--sim-actors` light actors (each a coroutine with its own
   connection and its own scripted engine, `actors/engines/scripted.py`, whose completions of
   `--sim-completion-tokens` tokens, logprobs and steps the trajectories carry; the
   generation's time is paced at `--sim-tokens-per-s`), light estimators turning
   each trajectory into samples and reset requests in GPO's proportions, a light learner
   acking the samples and publishing adapters that one actor per host fetches, all in this
   process against one Redis and then against a 3-node Redis Cluster. The message rates the
   streams' produced counters show over `--sim-seconds`, fed into the model, give a predicted
   server load, which is compared with the server's own INFO over the same window (per node
   on the cluster). On this 2-core machine the clients, not Redis, bound the simulation: it
   checks that costs add up linearly under 64 concurrent connections, not where Redis
   saturates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from actors.engines.base import Completion, GenerationRequest, SamplingSettings
from actors.engines.scripted import BAD, BOS, GOOD, ScriptedEngine, ScriptedProblem, step_spans
from actors.rollout import seed_for
from ops.bench.broadcast import safetensors_blob
from ops.bench.capacity_model import (
    MIB,
    STREAMS,
    AdapterCost,
    Deployment,
    Load,
    MessageCost,
    capacity,
    consumers,
    deployment_loads,
    predict,
    stream_rates,
    total,
)
from ops.bench.transport import server_cpu_seconds
from ops.harness import console_table, markdown_table, parser, write_bench_section
from protocol.adapters import fetch_adapter, publish_adapter
from protocol.codec import encode
from protocol.config import RedisConfig
from protocol.consumer import Consumer
from protocol.messages import Message, Prompt, ResetRequest, Sample, Trajectory
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.streams import (
    GROUP_ACTORS,
    GROUP_ESTIMATORS,
    GROUP_LEARNER,
    PROMPTS,
    RESETS,
    SAMPLES,
    TRAJECTORIES,
    Keys,
    Link,
)

VOCAB = 32_000
STEP_TOKENS = 32
ESTIMATORS_SIM = 8
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
QUIET_SECONDS = 3.0


# ---------------------------------------------------------------- representative messages


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


# ---------------------------------------------------------------- 3. the simulated check


@dataclass
class Sim:
    """A light system's shape and pace."""

    deployment: Deployment
    estimators: int = 8
    seconds: float = 20.0
    warmup: float = 5.0


@dataclass
class SimCounts:
    adapter_mib: dict[int, float] = field(default_factory=dict)
    """MiB of adapter chunks fetched, per node serving them."""


def scripted_problem(completion_tokens: int) -> ScriptedProblem:
    """A scripted task whose completions are about `completion_tokens` long (its steps
    average 4 tokens), every step easy but a pivotal one in the middle."""
    steps = max(1, completion_tokens // 4)
    return ScriptedProblem(
        stay_correct=tuple(0.5 if j == steps // 2 else 0.99 for j in range(steps))
    )


async def _actor(i: int, cfg: RedisConfig, sim: Sim, f: Factory, stop: asyncio.Event) -> None:
    """Like gpo-actor: up to BATCH_MESSAGES requests, resets first, generated as one batch
    by its scripted engine and paced (a sleep of the batch's tokens at `tokens_per_s`), its
    trajectories sent at once."""
    d = sim.deployment
    engine = ScriptedEngine(scripted_problem(d.completion_tokens), seed=i)
    tm = TransportMetrics(Metrics("sim"))
    link, keys = Link(cfg, tm), Keys(cfg.run_id)
    resets = Consumer(link, keys, RESETS, GROUP_ACTORS, f"actor-{i}", cfg, tm)
    prompts = Consumer(link, keys, PROMPTS, GROUP_ACTORS, f"actor-{i}", cfg, tm)
    out = Producer(link, keys, cfg, tm, stop)
    try:
        while not stop.is_set():
            got_resets = await resets.read(count=BATCH_MESSAGES, block_ms=0)
            got_prompts = await prompts.read(
                count=BATCH_MESSAGES - len(got_resets), block_ms=0 if got_resets else None
            )
            work = [x.message for x in got_resets] + [x.message for x in got_prompts]
            if not work:
                continue
            sampling = lambda m: SamplingSettings(  # noqa: E731
                max_new_tokens=2 * d.completion_tokens, seed=seed_for(m.id, i)
            )
            requests = [
                GenerationRequest(
                    [BOS],
                    n=m.n if isinstance(m, ResetRequest) else d.rollouts_per_prompt,
                    sampling=sampling(m),
                )
                for m in work
            ]
            trajs: list[Message] = []
            for m, result in zip(work, await engine.generate(requests), strict=True):
                reset = m if isinstance(m, ResetRequest) else None
                trajs += [
                    f.trajectory(m.prompt_id if reset else m.id, reset, k, c)
                    for k, c in enumerate(result.completions)
                ]
            tokens = sum(len(t.completion_token_ids) for t in trajs)
            await asyncio.sleep(tokens / d.tokens_per_s)
            await out.send(TRAJECTORIES, trajs)
            await resets.ack(got_resets)
            await prompts.ack(got_prompts)
    finally:
        await link.close()


async def _estimator(i: int, cfg: RedisConfig, sim: Sim, f: Factory, stop: asyncio.Event) -> None:
    """Like gpo-estimator's traffic: per fresh trajectory its sample, then reset samples
    (r = share / (1 - share) per fresh one), a share `requested_resets` of them asked of the
    actors as ResetRequests; a reset trajectory becomes one sample. No MC work."""
    d = sim.deployment
    tm = TransportMetrics(Metrics("sim"))
    link, keys = Link(cfg, tm), Keys(cfg.run_id)
    trajs = Consumer(link, keys, TRAJECTORIES, GROUP_ESTIMATORS, f"estimator-{i}", cfg, tm)
    out = Producer(link, keys, cfg, tm, stop)
    per_fresh = d.reset_share / (1 - d.reset_share)
    request_credit = reuse_credit = 0.0
    try:
        while not stop.is_set():
            got = await trajs.read(count=BATCH_MESSAGES)
            samples: list[Message] = []
            requests: list[Message] = []
            for delivery in got:
                t = delivery.message
                samples.append(f.sample(t, t.kind))
                if t.kind != "fresh":
                    continue
                request_credit += per_fresh * d.requested_resets / d.rollouts_per_request
                reuse_credit += per_fresh * (1 - d.requested_resets)
                while request_credit >= 1:
                    requests.append(f.reset_request(t, d.rollouts_per_request))
                    request_credit -= 1
                while reuse_credit >= 1:
                    samples.append(f.sample(t, "reset"))
                    reuse_credit -= 1
            if samples:
                await out.send(SAMPLES, samples)
            if requests:
                await out.send(RESETS, requests)
            await trajs.ack(got)
    finally:
        await link.close()


async def _learner(cfg: RedisConfig, stop: asyncio.Event) -> None:
    """Reads and acks samples, 64 at a time."""
    tm = TransportMetrics(Metrics("sim"))
    link, keys = Link(cfg, tm), Keys(cfg.run_id)
    samples = Consumer(link, keys, SAMPLES, GROUP_LEARNER, "learner", cfg, tm)
    try:
        while not stop.is_set():
            await samples.ack(await samples.read(count=64))
    finally:
        await link.close()


async def _feeder_and_publisher(
    cfg: RedisConfig, sim: Sim, f: Factory, stop: asyncio.Event, adapters: asyncio.Queue
) -> None:
    """Keeps `prompts` at two batches per actor; publishes an adapter every update period."""
    d = sim.deployment
    tm = TransportMetrics(Metrics("sim"))
    link, keys = Link(cfg, tm), Keys(cfg.run_id)
    feed = Producer(link, keys, cfg, tm, stop)
    blob = safetensors_blob(max(1, round(d.adapter_mib))) if d.updates_per_s else b""
    target = 2 * BATCH_MESSAGES * d.actors
    next_update, version = time.monotonic(), 0
    try:
        while not stop.is_set():
            if (room := target - await feed.backlog(PROMPTS)) > 0:
                await feed.send(PROMPTS, [f.prompt() for _ in range(room)], wait=False)
            if d.updates_per_s and time.monotonic() >= next_update:
                version += 1
                pointer = await publish_adapter(link, keys, version, blob, {"r": 8}, "sim")
                adapters.put_nowait(pointer)
                next_update += 1 / d.updates_per_s
            await asyncio.sleep(0.25)
    finally:
        await link.close()


async def _fetchers(
    cfg: RedisConfig,
    hosts: int,
    adapters: asyncio.Queue,
    counts: SimCounts,
    node_of: Callable[[str], int],
) -> None:
    """One fetch per host of every adapter version published."""
    links = [Link(cfg) for _ in range(hosts)]
    try:
        while True:
            pointer = await adapters.get()
            await asyncio.gather(*(fetch_adapter(link, pointer) for link in links))
            per_chunk = hosts * pointer.size / len(pointer.chunk_keys) / MIB
            for key in pointer.chunk_keys:
                node = node_of(key)
                counts.adapter_mib[node] = counts.adapter_mib.get(node, 0.0) + per_chunk
    finally:
        for link in links:
            await link.close()


async def _groups(cfg: RedisConfig) -> None:
    link, keys = Link(cfg), Keys(cfg.run_id)
    tm = TransportMetrics(Metrics("sim"))
    for stream, group in (
        (PROMPTS, GROUP_ACTORS),
        (RESETS, GROUP_ACTORS),
        (TRAJECTORIES, GROUP_ESTIMATORS),
        (SAMPLES, GROUP_LEARNER),
    ):
        await Consumer(link, keys, stream, group, "setup", cfg, tm).ensure_group()
    await link.close()


@dataclass
class SimResult:
    rates: dict[str, float]
    adapter_mib_per_s: float
    measured: list[Load]
    """Per node."""
    predicted: list[Load]


async def simulate(
    url: str,
    nodes: Sequence,
    node_of: Callable[[str], int],
    costs: Costs,
    sim: Sim,
) -> SimResult:
    """Run the light system on `url`; compare each node's INFO over the window with the model
    at the rates the produced counters show. `node_of(key)`: the node index serving a key."""
    d = sim.deployment
    run = f"sim-{uuid.uuid4().hex[:6]}"
    cfg = RedisConfig(url=url, run_id=run)  # the defaults the processes run with
    keys = Keys(run)
    await _groups(cfg)
    # the servers' own load with no traffic (timers, a cluster's gossip), added to the model
    quiet = [await asyncio.to_thread(snapshot, n) for n in nodes]
    await asyncio.sleep(QUIET_SECONDS)
    baseline = [
        load_of(await asyncio.to_thread(snapshot, n) - q, QUIET_SECONDS)
        for n, q in zip(nodes, quiet)
    ]
    stop = asyncio.Event()
    adapters: asyncio.Queue = asyncio.Queue()
    counts = SimCounts()
    f = Factory(Shapes(d.prompt_tokens, d.completion_tokens), run, seed=1)
    tasks = [asyncio.create_task(_actor(i, cfg, sim, f, stop)) for i in range(d.actors)]
    tasks += [asyncio.create_task(_estimator(i, cfg, sim, f, stop)) for i in range(sim.estimators)]
    tasks.append(asyncio.create_task(_learner(cfg, stop)))
    tasks.append(asyncio.create_task(_feeder_and_publisher(cfg, sim, f, stop, adapters)))
    fetching = asyncio.create_task(_fetchers(cfg, d.hosts, adapters, counts, node_of))
    probe = Link(cfg)

    async def produced() -> dict[str, int]:
        return {
            s: int(await probe.call(lambda r, s=s: r.get(keys.produced(s))) or 0) for s in STREAMS
        }

    try:
        await asyncio.sleep(sim.warmup)
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()
        start_counts, start_mib = await produced(), dict(counts.adapter_mib)
        start = [await asyncio.to_thread(snapshot, n) for n in nodes]
        t0 = time.monotonic()
        await asyncio.sleep(sim.seconds)
        end = [await asyncio.to_thread(snapshot, n) for n in nodes]
        seconds = time.monotonic() - t0
        end_counts, end_mib = await produced(), dict(counts.adapter_mib)
        dead = {s: await probe.call(lambda r, s=s: r.xlen(keys.dead(s))) for s in STREAMS}
    finally:
        stop.set()
        fetching.cancel()
        results = await asyncio.gather(*tasks, fetching, return_exceptions=True)
        await probe.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    errors = [e for e in errors if not isinstance(e, asyncio.CancelledError)]
    if errors:
        raise errors[0]
    if any(dead.values()):  # a consumer refused what the light processes sent
        raise RuntimeError(f"simulated check: messages dead-lettered, by stream: {dead}")
    rates = {s: (end_counts[s] - start_counts[s]) / seconds for s in STREAMS}
    mib_per_s = [(end_mib.get(i, 0.0) - start_mib.get(i, 0.0)) / seconds for i in range(len(nodes))]
    measured = [load_of(b - a, seconds) for a, b in zip(start, end)]
    predicted = [
        Load(b.cpu, b.commands_per_s, b.bytes_in_per_s, b.bytes_out_per_s, 0.0) for b in baseline
    ]
    readers = {**consumers(d), TRAJECTORIES: sim.estimators}
    for s, load in predict(costs.streams, rates, idle=costs.idle, readers=readers).items():
        i = node_of(keys.stream(s))
        predicted[i] = predicted[i] + load
    for i, mib in enumerate(mib_per_s):
        predicted[i] = predicted[i] + total(predict({}, {}, costs.adapter, mib))
    return SimResult(rates, sum(mib_per_s), measured, predicted)


# ---------------------------------------------------------------- the command line


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = parser("gpo bench capacity", __doc__)
    a = p.add_argument
    a("--actors", type=int, default=64, help="deployment: actors (one per inference GPU)")
    a("--tokens-per-s", type=float, default=3000.0, help="deployment: tokens/s per actor")
    a("--completion-tokens", type=int, default=1024, help="mean completion tokens")
    a("--prompt-tokens", type=int, default=256, help="mean prompt tokens")
    a("--adapter-mib", type=float, default=300.0, help="adapter size (7B, r=64, bf16: ~300)")
    a("--update-seconds", type=float, default=60.0, help="seconds between adapter versions")
    a("--processes-per-host", type=int, default=8, help="processes sharing one host cache")
    a("--messages", type=int, default=2000, help="messages per stream for the costs")
    a("--sim-actors", type=int, default=64, help="light actors in the simulated check")
    a("--sim-tokens-per-s", type=float, default=1500.0, help="their tokens/s each")
    a("--sim-completion-tokens", type=int, default=256, help="their completion tokens")
    a("--sim-adapter-mib", type=float, default=4.0, help="adapter size in the simulation")
    a("--sim-update-seconds", type=float, default=2.0, help="seconds between its versions")
    a("--sim-seconds", type=float, default=20.0, help="measured window of the simulation")
    a("--no-cluster", action="store_true", help="skip the 3-node cluster check")
    args = p.parse_args(argv)
    for name in ("actors", "completion_tokens", "prompt_tokens", "messages", "sim_actors"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("tokens_per_s", "update_seconds", "sim_tokens_per_s", "sim_seconds"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    return args


def deployment(args: argparse.Namespace) -> Deployment:
    return Deployment(
        actors=args.actors,
        tokens_per_s=args.tokens_per_s,
        completion_tokens=args.completion_tokens,
        prompt_tokens=args.prompt_tokens,
        adapter_mib=args.adapter_mib,
        updates_per_s=1 / args.update_seconds,
        processes_per_host=args.processes_per_host,
    )


def sim_deployment(args: argparse.Namespace) -> Deployment:
    return Deployment(
        actors=args.sim_actors,
        tokens_per_s=args.sim_tokens_per_s,
        completion_tokens=args.sim_completion_tokens,
        prompt_tokens=args.prompt_tokens,
        adapter_mib=args.sim_adapter_mib,
        updates_per_s=1 / args.sim_update_seconds,
        processes_per_host=args.processes_per_host,
    )


@dataclass
class Costs:
    """What `gpo bench capacity` measured at one set of message sizes."""

    streams: dict[str, MessageCost]
    adapter: AdapterCost
    idle: Load


async def measure_costs(url: str, node, shapes: Shapes, messages: int) -> Costs:
    streams = {s: await measure_stream(url, node, s, shapes, messages) for s in STREAMS}
    return Costs(streams, await measure_adapter(url, node, 16), await measure_idle(url, node))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from ops.redis_cluster import LocalCluster
    from ops.redis_server import RedisServer

    d, sd = deployment(args), sim_deployment(args)
    checks: list[tuple[str, SimResult]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis", extra=("--maxmemory", "0")).start()
        try:
            node = server.client()
            print(f"per message: {args.messages} messages per stream, at two message sizes")
            costs = asyncio.run(
                measure_costs(
                    server.url, node, Shapes(d.prompt_tokens, d.completion_tokens), args.messages
                )
            )
            sim_costs = asyncio.run(
                measure_costs(
                    server.url, node, Shapes(sd.prompt_tokens, sd.completion_tokens), args.messages
                )
            )
            node.flushall()
            print(f"simulated check: {sd.actors} light actors on one Redis")
            result = asyncio.run(
                simulate(
                    server.url, [node], lambda key: 0, sim_costs, Sim(sd, seconds=args.sim_seconds)
                )
            )
            checks.append(("one Redis", result))
        finally:
            server.stop()
        if not args.no_cluster:
            cluster = LocalCluster(Path(tmp) / "cluster").start()
            try:
                print(f"simulated check: {sd.actors} light actors on a 3-node cluster")
                clients = [n.client() for n in cluster.nodes]
                result = asyncio.run(
                    simulate(
                        cluster.url,
                        clients,
                        cluster.node_of,
                        sim_costs,
                        Sim(sd, seconds=args.sim_seconds),
                    )
                )
                checks.append(("3-node cluster", result))
            finally:
                cluster.stop()
    print()
    tables, reading = report(args, d, costs, checks)
    print(tables + "\n\n" + reading)
    if args.write_results:
        write_bench_section("capacity", argv, *report(args, d, costs, checks, md=True))
    return 0


# ---------------------------------------------------------------- report


def _si(x: float, unit: str = "") -> str:
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f} {prefix}{unit}"
    return f"{x:.1f} {unit}".strip()


def report(
    args: argparse.Namespace,
    d: Deployment,
    measured: Costs,
    checks: Sequence[tuple[str, SimResult]],
    md: bool = False,
) -> tuple[str, str]:
    costs, adapter, idle = measured.streams, measured.adapter, measured.idle
    table = markdown_table if md else (lambda h, r: console_table(h, r, left=1))
    cost_rows = [
        [
            s,
            f"{c.size}",
            f"{c.cpu_us:.1f}",
            f"{c.commands:.1f}",
            f"{c.bytes_in:.0f}",
            f"{c.bytes_out:.0f}",
            f"{c.memory:.0f}",
        ]
        for s, c in costs.items()
    ]
    cost_rows.append(
        [
            "a waiting consumer, per second",
            "-",
            f"{idle.cpu * 1e6:.0f}",
            f"{idle.commands_per_s:.2f}",
            f"{idle.bytes_in_per_s:.0f}",
            f"{idle.bytes_out_per_s:.0f}",
            "-",
        ]
    )
    cost_rows.append(
        [
            "adapter, per MiB fetched",
            "-",
            f"{adapter.cpu_us_per_mib:.0f}",
            "-",
            "-",
            f"{adapter.bytes_out_per_mib:.0f}",
            "-",
        ]
    )
    rates = stream_rates(d)
    loads = deployment_loads(costs, adapter, d, idle)
    load_rows = [
        [
            k,
            f"{rates.get(k, d.updates_per_s):.2f}",
            f"{v.cpu:.3f}",
            _si(v.commands_per_s),
            _si(v.bytes_in_per_s, "B/s"),
            _si(v.bytes_out_per_s, "B/s"),
            _si(v.memory, "B"),
        ]
        for k, v in loads.items()
    ]
    t = total(loads)
    load_rows.append(
        [
            "total",
            "-",
            f"{t.cpu:.3f}",
            _si(t.commands_per_s),
            _si(t.bytes_in_per_s, "B/s"),
            _si(t.bytes_out_per_s, "B/s"),
            _si(t.memory, "B"),
        ]
    )
    cap = capacity(costs, adapter, d, idle=idle)
    check_rows = []
    for name, res in checks:
        for i, (m, p) in enumerate(zip(res.measured, res.predicted)):
            where = name if len(res.measured) == 1 else f"{name}, node {i}"
            check_rows.append(
                [
                    where,
                    f"{p.cpu:.3f}",
                    f"{m.cpu:.3f}",
                    _ratio(m.cpu, p.cpu),
                    _si(p.commands_per_s),
                    _si(m.commands_per_s),
                    _ratio(m.commands_per_s, p.commands_per_s),
                    _si(p.bytes_out_per_s, "B/s"),
                    _si(m.bytes_out_per_s, "B/s"),
                    _ratio(m.bytes_out_per_s, p.bytes_out_per_s),
                ]
            )
    tables = (
        f"Per message, produced + read + acked + trimmed ({args.messages} per stream, "
        f"{d.prompt_tokens} prompt and {d.completion_tokens} completion tokens), batched as "
        "the processes batch them (messages per send / per read: "
        + ", ".join(f"{s} {w}/{r}" for s, (w, r) in BATCHING.items())
        + "):\n\n"
        + table(
            [
                "stream",
                "bytes",
                "server CPU us",
                "commands",
                "bytes in",
                "bytes out",
                "memory while waiting",
            ],
            cost_rows,
        )
        + f"\n\nThe model at {d.actors} actors x {d.tokens_per_s:.0f} tokens/s, "
        f"{d.adapter_mib:.0f} MiB adapter every {1 / d.updates_per_s:.0f} s fetched once by "
        f"each of {d.hosts} hosts, backlogs at {d.backlog}:\n\n"
        + table(["stream", "msg/s", "CPU (cores)", "commands/s", "in", "out", "memory"], load_rows)
    )
    if check_rows:
        sd = sim_deployment(args)
        tables += (
            f"\n\nSimulated check: {sd.actors} light actors x {sd.tokens_per_s:.0f} tokens/s, "
            f"{sd.completion_tokens} completion tokens, {sd.adapter_mib:.0f} MiB adapter every "
            f"{1 / sd.updates_per_s:.0f} s, {args.sim_seconds:.0f} s window; predicted = the "
            "model at the observed message rates:\n\n"
            + table(
                [
                    "server",
                    "CPU predicted",
                    "measured",
                    "ratio",
                    "commands/s predicted",
                    "measured",
                    "ratio",
                    "out predicted",
                    "measured",
                    "ratio",
                ],
                check_rows,
            )
        )
        for name, res in checks:
            tables += (
                f"\n\n{name}: observed msg/s "
                + ", ".join(f"{s} {r:.0f}" for s, r in res.rates.items())
                + f"; adapter {res.adapter_mib_per_s:.1f} MiB/s fetched"
            )
    text = (
        f"At this deployment one Redis carries about {cap.one_redis:.0f} actors before "
        f"{cap.one_redis_bound} (the model scales every rate with the actors); the deployment "
        f"above needs {t.cpu:.2f} of a core. A {cap.nodes}-node cluster, with each stream on "
        f"its own node, carries about {cap.cluster:.0f} ({cap.cluster_bound}): every key of "
        "one stream shares its hash tag, so one stream's node bounds a cluster, and past it "
        "the streams would have to be split."
    )
    if check_rows:
        ratios = [float(r[3]) for r in check_rows if r[3] != "-"]
        text += (
            f" In the simulated check the measured server CPU was {min(ratios):.2f}x to "
            f"{max(ratios):.2f}x the model's prediction at the observed rates (per server or "
            "node); commands and bytes are in the table. On a 2-core machine the light "
            "clients, not Redis, set the pace."
        )
    return tables, text


def _ratio(measured: float, predicted: float) -> str:
    return f"{measured / predicted:.2f}" if predicted > 0 else "-"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
