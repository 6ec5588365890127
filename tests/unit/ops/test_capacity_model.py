"""The capacity model's arithmetic, against hand-computed figures."""

from __future__ import annotations

import math

import pytest

from ops.bench.capacity_model import (
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
from protocol.streams import PROMPTS, RESETS, SAMPLES, TRAJECTORIES


def test_rates_follow_the_actors_pace_and_gpos_proportions():
    # 2 actors x 100 tokens/s / 50 tokens = 4 trajectories/s. One reset sample per fresh one
    # (share 0.5), a quarter of them requested: fresh F with F (1 + 0.25) = 4 -> F = 3.2,
    # requested reset rollouts 0.8/s in requests of 4 -> 0.2 requests/s; prompts F / 4;
    # samples F (1 + 1) = 6.4.
    d = Deployment(actors=2, tokens_per_s=100, completion_tokens=50, requested_resets=0.25)
    rates = stream_rates(d)
    assert rates[TRAJECTORIES] == pytest.approx(4.0)
    assert rates[PROMPTS] == pytest.approx(0.8)
    assert rates[RESETS] == pytest.approx(0.2)
    assert rates[SAMPLES] == pytest.approx(6.4)
    assert consumers(d) == {PROMPTS: 2, RESETS: 2, TRAJECTORIES: 2, SAMPLES: 1}


def cost(cpu_us: float, size: float = 1000.0) -> MessageCost:
    return MessageCost(cpu_us=cpu_us, commands=3.0, bytes_in=size, bytes_out=size, memory=2 * size)


COSTS = {PROMPTS: cost(10), TRAJECTORIES: cost(20), RESETS: cost(10), SAMPLES: cost(40)}
ADAPTER = AdapterCost(cpu_us_per_mib=500.0, bytes_out_per_mib=2**20)


def test_loads_add_rates_times_costs_and_the_adapters_fetches():
    loads = predict(COSTS, {TRAJECTORIES: 1000.0}, ADAPTER, mib_fetched_per_s=100.0, backlog=10)
    assert loads[TRAJECTORIES].cpu == pytest.approx(0.02)  # 1000/s x 20 us
    assert loads[TRAJECTORIES].commands_per_s == pytest.approx(3000.0)
    assert loads[TRAJECTORIES].bytes_out_per_s == pytest.approx(1e6)
    assert loads[TRAJECTORIES].memory == pytest.approx(20_000.0)  # 10 waiting x 2000 B
    assert loads[SAMPLES].cpu == 0.0
    assert loads["adapter"].cpu == pytest.approx(0.05)  # 100 MiB/s x 500 us
    assert loads["adapter"].bytes_out_per_s == pytest.approx(100 * 2**20)
    assert total(loads).cpu == pytest.approx(0.07)


def test_waiting_consumers_add_their_polling_per_stream():
    idle = Load(cpu=1e-4, commands_per_s=0.5, bytes_in_per_s=50, bytes_out_per_s=20, memory=0)
    loads = predict(COSTS, {}, idle=idle, readers={PROMPTS: 10, SAMPLES: 1})
    assert loads[PROMPTS].cpu == pytest.approx(1e-3)
    assert loads[PROMPTS].commands_per_s == pytest.approx(5.0)
    assert loads[SAMPLES].commands_per_s == pytest.approx(0.5)
    assert loads[RESETS].commands_per_s == 0.0


def test_capacity_is_the_bound_over_one_actors_load():
    # One actor: 10 tokens/s / 10 tokens = 1 trajectory/s, no resets: 1 sample/s and
    # 0.25 prompts/s. CPU per actor = 0.25 x 10 + 1 x 20 + 1 x 40 = 62.5 us/s, so 70% of a
    # core carries 0.7 / 62.5e-6 = 11,200 actors. Network: 2.25 kB/s per actor each way,
    # far below 1.25 GB/s. On a cluster `samples` (40 us/s per actor) alone bounds a node:
    # 0.7 / 40e-6 = 17,500.
    d = Deployment(actors=4, tokens_per_s=10, completion_tokens=10, reset_share=0.0)
    cap = capacity(COSTS, ADAPTER, d)
    assert cap.one_redis == pytest.approx(11_200)
    assert cap.one_redis_bound.startswith("CPU at 70%")
    assert cap.cluster == pytest.approx(17_500)
    assert "samples" in cap.cluster_bound
    # a slow link makes the network the bound: 1 MB/s / 2250 B/s per actor
    slow = capacity(COSTS, ADAPTER, d, link_bytes_per_s=1e6)
    assert slow.one_redis == pytest.approx(1e6 / 2250)
    assert slow.one_redis_bound.startswith("network")


def test_the_adapter_is_fetched_once_per_host():
    # 16 actors + 16 estimators on 8 processes a host = 4 hosts; a 100 MiB version every
    # 10 s -> 40 MiB/s fetched
    d = Deployment(actors=16, tokens_per_s=1, adapter_mib=100, updates_per_s=0.1)
    assert d.hosts == 4
    loads = deployment_loads(COSTS, ADAPTER, d)
    assert loads["adapter"].bytes_out_per_s == pytest.approx(40 * 2**20)
    assert loads["adapter"].memory == pytest.approx(3 * 100 * 2**20)  # three versions kept


def test_bad_deployments_are_refused():
    with pytest.raises(ValueError):
        Deployment(actors=0, tokens_per_s=1)
    with pytest.raises(ValueError):
        Deployment(actors=1, tokens_per_s=1, reset_share=1.0)
    assert math.isinf(capacity({}, ADAPTER, Deployment(actors=1, tokens_per_s=1)).one_redis)
