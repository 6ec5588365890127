"""`gpo bench capacity` on a private redis-server: the per-message costs count what the
client sends, and the model at a light system's observed rates predicts the commands and
bytes the server saw (CPU is reported, not asserted: timings on a shared machine are noisy)."""

from __future__ import annotations

import asyncio

import pytest

from actors.engines.base import GenerationRequest, SamplingSettings
from actors.engines.scripted import BAD, BOS, GOOD, ScriptedEngine
from ops.bench.capacity_costs import (
    Costs,
    Factory,
    Shapes,
    measure_adapter,
    measure_idle,
    measure_stream,
)
from ops.bench.capacity_model import STREAMS, Deployment
from ops.bench.capacity_sim import Sim, scripted_problem, simulate
from protocol.streams import RESETS, SAMPLES, TRAJECTORIES


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
    # every stream flows: the trajectories pass the estimators' strict decode
    assert result.rates[TRAJECTORIES] > 20 and result.rates[SAMPLES] > 20, result.rates
    assert result.rates[RESETS] > 0, result.rates
    (measured,), (predicted,) = result.measured, result.predicted
    assert measured.commands_per_s == pytest.approx(predicted.commands_per_s, rel=0.25)
    assert measured.bytes_out_per_s == pytest.approx(predicted.bytes_out_per_s, rel=0.25)
    assert measured.bytes_in_per_s == pytest.approx(predicted.bytes_in_per_s, rel=0.25)


def test_light_actors_send_their_scripted_engines_completions():
    problem = scripted_problem(128)
    request = GenerationRequest([BOS], n=2, sampling=SamplingSettings(max_new_tokens=256, seed=1))
    (result,) = asyncio.run(ScriptedEngine(problem).generate([request]))
    c = result.completions[0]
    # 32 steps of 3, 4, 5, 3, ... tokens (fillers, verdict, newline), then EOS
    assert problem.num_steps == 32 and len(c.token_ids) == 11 * 3 + 11 * 4 + 10 * 5 + 1
    t = Factory(Shapes(prompt_tokens=64, completion_tokens=128), "r").trajectory("p", None, 0, c)
    assert t.completion_token_ids.tolist() == c.token_ids
    assert t.logprobs.tolist() == pytest.approx(c.logprobs)
    assert len(t.step_spans) == 32 and len(t.prefix_token_ids) == 64
    assert t.step_spans[-1][1] == len(c.token_ids)  # EOS joins the last step
    last_verdict = [x for x in c.token_ids if x in (GOOD, BAD)][-1]
    assert t.reward == float(last_verdict == GOOD)
