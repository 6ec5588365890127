"""The capacity model: the load a deployment puts on Redis, from per-message costs.

`gpo bench capacity` measures, on loopback, what one message of each work stream costs the
Redis server from XADD to ack (`MessageCost`: server CPU, commands, bytes in and out, memory
while it waits), and what a MiB of adapter fetched costs. The model here is what those costs
add up to at a deployment's message rates (`Deployment` -> `stream_rates`), and where one
Redis stops being enough:

    server CPU   = sum over streams of (rate_s x cpu_s + consumers_s x idle cpu)
                   + adapter MiB fetched/s x cpu per MiB
    bytes out/in = the same sums over bytes (the adapter leaves once per fetching host)
    memory       = sum over streams of backlog_s x memory_s + kept versions x adapter size

Redis runs commands on one thread, so one Redis is enough while its CPU stays below
`utilization` of one core (at 0.7 an M/M/1 queue already waits 2.3 service times, and the
wait grows as rho / (1 - rho)) and its traffic below the network link. A Redis Cluster
spreads keys over nodes by hash slot, but every key of one stream carries the stream's hash
tag (`{trajectories}`), so a stream and its counters live on one node: a cluster divides
the load by at most total / heaviest stream, and past that the heaviest stream's node is
the bound. The adapter's chunk keys carry no tag and spread over every node.

Everything is linear in the number of actors, so the largest deployment is the ratio of the
bound to the load of one actor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from protocol.streams import PROMPTS, RESETS, SAMPLES, TRAJECTORIES

STREAMS = (PROMPTS, TRAJECTORIES, RESETS, SAMPLES)
MIB = 2**20


@dataclass(frozen=True)
class MessageCost:
    """What one message of a stream costs the Redis server, produced, read and acked."""

    cpu_us: float
    """Server CPU (user + system), microseconds."""
    commands: float
    """Commands run, those inside the producer's and the ack's scripts included."""
    bytes_in: float
    """Bytes the server received (the XADD, the read, the ack)."""
    bytes_out: float
    """Bytes the server sent (mostly the message to its consumer)."""
    memory: float
    """Bytes of server memory per entry while it waits in the stream."""
    size: int = 0
    """Bytes of the encoded message measured."""


@dataclass(frozen=True)
class AdapterCost:
    """What fetching one MiB of adapter chunks costs the server."""

    cpu_us_per_mib: float
    bytes_out_per_mib: float


@dataclass(frozen=True)
class Deployment:
    """A deployment's shape and pace: what sets its message rates."""

    actors: int
    tokens_per_s: float
    """Completion tokens each actor generates per second."""
    completion_tokens: int = 256
    prompt_tokens: int = 128
    rollouts_per_prompt: int = 4
    """`actor.rollout.n`: fresh rollouts per prompt."""
    reset_share: float = 0.5
    """`learner.reset_fraction`: the share of trained samples that are reset rollouts."""
    requested_resets: float = 0.25
    """The share of reset rollouts the actors generate from a ResetRequest; the rest are the
    estimators' own MC continuations (`reuse_mc_rollouts`), which cross Redis only as
    samples."""
    rollouts_per_request: int = 4
    """`estimator.n_reset`."""
    adapter_mib: float = 0.0
    """Size of one adapter version."""
    updates_per_s: float = 0.0
    """Adapter versions published per second."""
    estimators_per_actor: float = 1.0
    processes_per_host: int = 8
    """Processes sharing one host cache: the adapter is fetched once per host."""
    backlog: int = 1000
    """`redis.backlog_limit`: the most entries waiting in each stream."""
    kept_versions: int = 3

    def __post_init__(self) -> None:
        if self.actors < 1 or self.tokens_per_s <= 0 or self.completion_tokens < 1:
            raise ValueError("a deployment needs actors >= 1, tokens_per_s > 0, tokens >= 1")
        if not 0 <= self.reset_share < 1 or not 0 <= self.requested_resets <= 1:
            raise ValueError("reset_share must lie in [0, 1) and requested_resets in [0, 1]")

    @property
    def hosts(self) -> int:
        processes = self.actors * (1 + self.estimators_per_actor)
        return math.ceil(processes / self.processes_per_host)


def consumers(d: Deployment) -> dict[str, float]:
    """Consumers reading each stream: every actor reads `prompts` and `resets`, every
    estimator `trajectories`, the learner `samples`."""
    return {
        PROMPTS: d.actors,
        RESETS: d.actors,
        TRAJECTORIES: d.actors * d.estimators_per_actor,
        SAMPLES: 1,
    }


def stream_rates(d: Deployment) -> dict[str, float]:
    """Messages per second on each work stream.

    The actors' trajectories T = actors x tokens_per_s / completion_tokens are the fresh ones
    F and the requested resets. Per fresh sample the learner trains r = share / (1 - share)
    reset samples, of which `requested_resets` come from actors: T = F (1 + r q). Each fresh
    rollout and each reset rollout becomes one sample."""
    trajectories = d.actors * d.tokens_per_s / d.completion_tokens
    per_fresh = d.reset_share / (1 - d.reset_share)
    fresh = trajectories / (1 + per_fresh * d.requested_resets)
    requested = fresh * per_fresh * d.requested_resets
    return {
        PROMPTS: fresh / d.rollouts_per_prompt,
        TRAJECTORIES: trajectories,
        RESETS: requested / d.rollouts_per_request,
        SAMPLES: fresh * (1 + per_fresh),
    }


@dataclass(frozen=True)
class Load:
    """Redis load: CPU in cores of one thread, bytes per second, bytes of memory."""

    cpu: float
    commands_per_s: float
    bytes_in_per_s: float
    bytes_out_per_s: float
    memory: float

    def __add__(self, other: Load) -> Load:
        return Load(
            self.cpu + other.cpu,
            self.commands_per_s + other.commands_per_s,
            self.bytes_in_per_s + other.bytes_in_per_s,
            self.bytes_out_per_s + other.bytes_out_per_s,
            self.memory + other.memory,
        )


NO_LOAD = Load(0.0, 0.0, 0.0, 0.0, 0.0)


def stream_load(cost: MessageCost, rate: float, backlog: int = 0) -> Load:
    """The load of one stream carrying `rate` messages per second."""
    return Load(
        cpu=rate * cost.cpu_us * 1e-6,
        commands_per_s=rate * cost.commands,
        bytes_in_per_s=rate * cost.bytes_in,
        bytes_out_per_s=rate * cost.bytes_out,
        memory=backlog * cost.memory,
    )


def adapter_load(cost: AdapterCost, mib_fetched_per_s: float, mib_kept: float = 0.0) -> Load:
    """The load of adapter fetches (publishing writes the same bytes once: negligible)."""
    return Load(
        cpu=mib_fetched_per_s * cost.cpu_us_per_mib * 1e-6,
        commands_per_s=0.0,
        bytes_in_per_s=0.0,
        bytes_out_per_s=mib_fetched_per_s * cost.bytes_out_per_mib,
        memory=mib_kept * MIB,
    )


def predict(
    costs: Mapping[str, MessageCost],
    rates: Mapping[str, float],
    adapter: AdapterCost | None = None,
    mib_fetched_per_s: float = 0.0,
    backlog: int = 0,
    mib_kept: float = 0.0,
    idle: Load | None = None,
    readers: Mapping[str, float] | None = None,
) -> dict[str, Load]:
    """Per stream (and `adapter`), the load at these rates; with `idle` (one waiting
    consumer's load per second), each stream's `readers` add theirs: the blocking reads and
    pending checks every consumer makes whatever the traffic (an upper bound while busy)."""
    out = {s: stream_load(costs[s], rates.get(s, 0.0), backlog) for s in costs}
    if idle is not None and readers:
        out = {s: load + _scale(idle, readers.get(s, 0.0)) for s, load in out.items()}
    if adapter is not None:
        out["adapter"] = adapter_load(adapter, mib_fetched_per_s, mib_kept)
    return out


def total(loads: Mapping[str, Load]) -> Load:
    out = NO_LOAD
    for load in loads.values():
        out = out + load
    return out


def deployment_loads(
    costs: Mapping[str, MessageCost],
    adapter: AdapterCost,
    d: Deployment,
    idle: Load | None = None,
) -> dict[str, Load]:
    """The load of deployment `d`, per stream and adapter."""
    return predict(
        costs,
        stream_rates(d),
        adapter,
        mib_fetched_per_s=d.updates_per_s * d.adapter_mib * d.hosts,
        backlog=d.backlog,
        mib_kept=d.kept_versions * d.adapter_mib,
        idle=idle,
        readers=consumers(d),
    )


@dataclass(frozen=True)
class Capacity:
    """The most actors a setup carries, and what bounds it."""

    one_redis: float
    one_redis_bound: str
    cluster: float
    """With every stream on its own node and the chunks spread over `nodes`."""
    cluster_bound: str
    nodes: int


def capacity(
    costs: Mapping[str, MessageCost],
    adapter: AdapterCost,
    d: Deployment,
    *,
    idle: Load | None = None,
    utilization: float = 0.7,
    link_bytes_per_s: float = 1.25e9,
    nodes: int = 3,
) -> Capacity:
    """Actors at which the first bound is met, for one Redis and for a `nodes`-node cluster:
    `d`'s load per actor (its hosts, estimators and pace scaled with it) against CPU at
    `utilization` of one core and `link_bytes_per_s` each way (10 Gbit/s)."""
    loads = deployment_loads(costs, adapter, d, idle)
    per_actor = {k: _scale(v, 1 / d.actors) for k, v in loads.items()}

    def limit(load: Load) -> tuple[float, str]:
        bounds = {
            f"CPU at {utilization:.0%} of one core": _ratio(utilization, load.cpu),
            "network out": _ratio(link_bytes_per_s, load.bytes_out_per_s),
            "network in": _ratio(link_bytes_per_s, load.bytes_in_per_s),
        }
        name = min(bounds, key=bounds.__getitem__)
        return bounds[name], name

    single, single_bound = limit(total(per_actor))
    # a cluster: each stream alone on a node; every node serves 1/nodes of the chunk fetches
    chunks = _scale(per_actor.get("adapter", NO_LOAD), 1 / nodes)
    worst, bound, stream = min(
        ((*limit(per_actor[s] + chunks), s) for s in STREAMS if s in per_actor),
        default=(math.inf, "nothing", "none"),
    )
    return Capacity(single, single_bound, worst, f"{bound} on the node of `{stream}`", nodes)


def _ratio(bound: float, per_actor: float) -> float:
    return bound / per_actor if per_actor > 0 else math.inf


def _scale(load: Load, factor: float) -> Load:
    """A load's rates times `factor` (its memory, set by backlogs and versions, stays)."""
    return Load(
        load.cpu * factor,
        load.commands_per_s * factor,
        load.bytes_in_per_s * factor,
        load.bytes_out_per_s * factor,
        load.memory,
    )
