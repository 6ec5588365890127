"""`gpo bench capacity` on a private redis-server: the per-message costs count what the
client sends, and the model at a light system's observed rates predicts the commands and
bytes the server saw (CPU is reported, not asserted: timings on a shared machine are noisy)."""

from __future__ import annotations

import asyncio

import pytest

from ops.bench.capacity import (
    Costs,
    Shapes,
    Sim,
    measure_adapter,
    measure_idle,
    measure_stream,
    simulate,
)
from ops.bench.capacity_model import STREAMS, Deployment
from protocol.streams import TRAJECTORIES


def test_a_trajectory_costs_its_xadd_its_read_and_its_owner_checked_ack(redis_server):
    node = redis_server.client()
    cost = asyncio.run(measure_stream(redis_server.url, node, TRAJECTORIES, Shapes(64, 256), 256))
    # per message: XADD, then XPENDING + XACK in the ack script; per send of 32: MULTI,
    # INCRBY, EXEC; per read of 8: XREADGROUP, and the ack's EVALSHA + INCRBY: 3 + 3/32 +
    # 3/8 = 3.47, plus a few calls per run (pending checks, the trim)
    assert 3.40 <= cost.commands <= 3.55, cost
    # the server receives each message once (with its acks' and scripts' arguments), sends
    # it once, to its consumer, and keeps it while it waits
    assert cost.size <= cost.bytes_in <= 1.25 * cost.size, cost
    assert cost.size <= cost.bytes_out <= 1.1 * cost.size, cost
    assert cost.size <= cost.memory <= 1.5 * cost.size, cost
    assert cost.cpu_us > 0


def test_the_model_predicts_the_light_systems_commands_and_bytes(redis_server):
    node = redis_server.client()
    shapes = Shapes(prompt_tokens=64, completion_tokens=128)

    async def measure() -> Costs:
        streams = {s: await measure_stream(redis_server.url, node, s, shapes, 256) for s in STREAMS}
        adapter = await measure_adapter(redis_server.url, node, 1, fetches=2)
        return Costs(streams, adapter, await measure_idle(redis_server.url, node, 8, 2.0))

    costs = asyncio.run(measure())
    assert costs.adapter.bytes_out_per_mib == pytest.approx(2**20, rel=0.05)
    node.flushall()
    d = Deployment(actors=8, tokens_per_s=3000, completion_tokens=128, prompt_tokens=64)
    result = asyncio.run(
        simulate(redis_server.url, [node], lambda key: 0, costs, Sim(d, 4, 4.0, 2.0))
    )
    assert result.rates[TRAJECTORIES] > 20, result.rates
    (measured,), (predicted,) = result.measured, result.predicted
    assert measured.commands_per_s == pytest.approx(predicted.commands_per_s, rel=0.25)
    assert measured.bytes_out_per_s == pytest.approx(predicted.bytes_out_per_s, rel=0.25)
    assert measured.bytes_in_per_s == pytest.approx(predicted.bytes_in_per_s, rel=0.25)
