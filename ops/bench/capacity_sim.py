"""The simulated check of the capacity model (`gpo bench capacity`, part 3): light actors
(each a coroutine with its own connection and its own scripted engine,
`actors/engines/scripted.py`, whose completions, logprobs and steps the trajectories carry;
the generation's time paced at the deployment's tokens/s), light estimators turning each
trajectory into samples and reset requests in GPO's proportions, a light learner acking the
samples and publishing adapters that one actor per host fetches, all in one process against
one Redis or a Redis Cluster. The message rates the streams' produced counters show, fed into
the model (ops/bench/capacity_model.py) with the measured costs
(ops/bench/capacity_costs.py), give a predicted server load, compared with each node's own
INFO over the same window.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from actors.engines.base import GenerationRequest, SamplingSettings
from actors.engines.scripted import BOS, ScriptedEngine, ScriptedProblem
from actors.rollout import seed_for
from ops.bench.broadcast import safetensors_blob
from ops.bench.capacity_costs import BATCH_MESSAGES, Costs, Factory, Shapes, load_of, snapshot
from ops.bench.capacity_model import MIB, STREAMS, Deployment, Load, consumers, predict, total
from protocol.adapters import fetch_adapter, publish_adapter
from protocol.config import RedisConfig
from protocol.consumer import Consumer
from protocol.messages import Message, ResetRequest
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

QUIET_SECONDS = 3.0
"""The servers' own load with no traffic is measured over this window first."""


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


def _scripted_request(work: Message, d: Deployment, seed: int) -> GenerationRequest:
    """The scripted engine's request for a prompt (`rollouts_per_prompt` completions) or a
    reset request (its `n`), seeded as gpo-actor seeds each message."""
    return GenerationRequest(
        [BOS],
        n=work.n if isinstance(work, ResetRequest) else d.rollouts_per_prompt,
        sampling=SamplingSettings(
            max_new_tokens=2 * d.completion_tokens, seed=seed_for(work.id, seed)
        ),
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
            requests = [_scripted_request(m, d, seed=i) for m in work]
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
