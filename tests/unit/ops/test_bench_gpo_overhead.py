"""ops/bench/gpo_overhead.py and ops/generation_replay.py: trained-sample accounting on a
scripted engine, and the ratios by hand."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import numpy as np
import pytest

from actors.engines.scripted import (
    ScriptedEngine,
    ScriptedProblem,
    ScriptedTask,
    decode,
    step_spans,
)
from actors.mc_config import McConfig
from actors.rollout import RolloutConfig
from ops.bench.gpo_overhead import run_repeats, variants
from ops.bench.gpo_overhead_report import PPO, Measure, reading, summarise
from ops.generation_replay import Cost, Rollout, Shape, Workload, duplicate_states

PROMPTS, N, BATCH, K, N_RESET, EST_BATCH = 5, 4, 3, 2, 3, 6


@pytest.fixture(scope="module")
def table():
    problem = ScriptedProblem.random(np.random.default_rng(3), steps=(3, 5))
    work = Workload(
        prompts=[(problem.prompt_token_ids, problem)] * PROMPTS,
        score=ScriptedTask().score,
        decode=decode,
        spans=step_spans,
    )
    shape = Shape(RolloutConfig(n=N, max_new_tokens=64), BATCH, McConfig(k=K), N_RESET, EST_BATCH)
    engines = {"shared": ScriptedEngine(problem), "off": ScriptedEngine(problem)}
    cases = variants(shape.mc, shape.reuse)
    return cases, asyncio.run(run_repeats(work, engines, shape, cases, repeats=2))


def test_ppo_trains_every_rollout_and_nothing_else(table):
    cases, reps = table
    for rep in reps:
        ppo = rep[[c.name for c in cases].index(PPO)]
        assert ppo.trajectories == ppo.trained == ppo.fresh.completions == PROMPTS * N
        assert ppo.fresh.calls == math.ceil(PROMPTS / BATCH)  # batch_messages prompts a call
        assert ppo.mc == Cost() and ppo.reset == Cost()


def test_gpo_trains_rollouts_plus_n_reset_per_critical_step(table):
    cases, reps = table
    for rep in reps:
        for m in rep[1:]:
            assert m.fresh is rep[0].fresh  # the same rollouts for every case
            if "failed only" in m.name:  # the successes are not searched
                assert m.estimated < m.trajectories == PROMPTS * N
                continue
            assert m.estimated == m.trajectories == PROMPTS * N  # scripted rollouts have steps
            assert 0 < m.resets <= m.estimated
            if "reuse_mc_rollouts" in m.name:
                continue
            assert m.reused == 0
            assert m.reset.completions == N_RESET * m.resets
            assert m.reset.calls == math.ceil(m.resets / BATCH)
            assert m.trained == PROMPTS * N + N_RESET * m.resets


def test_reuse_mc_rollouts_trains_the_k_continuations_at_s_m_of_one_reset_per_state(table):
    # K = 2 < n_reset = 3: an answered reset trains its K continuations; a second reset of
    # the same state in an estimator batch (every prompt is one problem here) is generated
    cases, reps = table
    for rep in reps:
        sharing, reused, reusing = rep[4], rep[5], rep[6]
        # without share_states every reset is answered: K continuations each, none generated
        assert "reuse_mc_rollouts" in reused.name and "share_states" not in reused.name
        assert reused.reset == Cost() and reused.reused == K * reused.resets
        assert "reuse_mc_rollouts" in reusing.name and "reuse_mc" not in sharing.name
        assert reusing.resets == sharing.resets  # the same searches, the same resets
        answered = reusing.reused // K
        assert reusing.reused == K * answered and answered >= math.ceil(PROMPTS * N / EST_BATCH)
        assert reusing.reset.completions == N_RESET * (reusing.resets - answered)
        assert reusing.trained == PROMPTS * N + reusing.reset.completions + reusing.reused
        assert replace(reusing.mc, seconds=0) == replace(sharing.mc, seconds=0)


def test_uniform_search_spends_k_per_boundary_in_one_call_per_estimator_batch(table):
    cases, reps = table
    for rep in reps:
        boundaries = rep[1].states[0]
        off, shared, _, sharing, _, _, alone = rep[1:8]
        assert "batch_messages = 1" in alone.name and "share_states" in sharing.name
        for m in (off, shared, alone):
            assert m.mc.completions == K * boundaries
        # 20 trajectories in stream order, EST_BATCH at a time: 6 + 6 + 6 + 2
        assert off.mc.calls == shared.mc.calls == math.ceil(PROMPTS * N / EST_BATCH)
        assert alone.mc.calls == PROMPTS * N  # one call per trajectory
        # the scripted engine samples from (seed, index, prefix) only: batching changes nothing
        assert alone.resets == shared.resets == off.resets
        assert alone.mc.tokens == shared.mc.tokens
        # share_states: a state reached by several searches of one batch is searched once
        # (s_0 at least: every prompt here is the same problem), in as many calls
        assert K * off.mc.calls <= sharing.mc.completions < shared.mc.completions
        assert sharing.mc.calls == shared.mc.calls


def test_adaptive_search_takes_one_call_per_round_of_a_batch(table):
    cases, reps = table
    for rep in reps:
        adaptive = rep[3]
        assert "adaptive" in adaptive.name
        batches = math.ceil(PROMPTS * N / EST_BATCH)
        assert batches < adaptive.mc.calls <= batches * McConfig().adaptive_max_rounds


def test_reading_uses_the_rows_of_the_table(table):
    cases, reps = table
    shape = Shape(RolloutConfig(n=N), BATCH, McConfig(k=K), N_RESET, EST_BATCH)
    text = reading(summarise(reps, PROMPTS), reps, shape)
    assert f"({EST_BATCH} trajectories per estimator batch)" in text
    assert "estimator.batch_messages = 1" in text and "share_states" in text


def test_summary_ratios_by_hand():
    def rep(ppo_s, gpo_mc_s):
        fresh = Cost(seconds=ppo_s, calls=1, completions=8, tokens=80)
        return [
            Measure(PPO, fresh, trajectories=8),
            Measure(
                "gpo",
                fresh,
                mc=Cost(seconds=gpo_mc_s, calls=8, completions=20, tokens=200),
                reset=Cost(seconds=1.0, calls=1, completions=8, tokens=40),
                trajectories=8,
                estimated=8,
                resets=2,
            ),
        ]

    # repeat 1: PPO 2 s / 8 samples; GPO (2 + 3 + 1) s / 16 samples -> ratio 1.5
    # repeat 2: PPO 4 s / 8; GPO (4 + 11 + 1) s / 16 -> ratio 2.0; repeat 3: ratio 3.0
    ppo, gpo = summarise([rep(2.0, 3.0), rep(4.0, 11.0), rep(1.0, 4.0)], prompts=2)
    assert ppo.seconds_ratio == 1.0 and ppo.seconds_per_sample == 0.25
    assert gpo.seconds_ratio == pytest.approx(2.0)  # median of 1.5, 2.0, 3.0
    assert gpo.seconds_per_sample == pytest.approx(0.375)  # median of 0.375, 1.0, 0.375
    assert gpo.trained == 48 and ppo.trained == 24
    assert ppo.tokens_per_sample == 10.0
    assert gpo.tokens_per_sample == pytest.approx(960 / 48) and gpo.tokens_ratio == 2.0
    assert gpo.completions_per_sample == pytest.approx(108 / 48)
    assert gpo.calls_per_prompt == pytest.approx(30 / 6)  # 10 calls a repeat, 2 prompts
    assert gpo.share == pytest.approx((7 / 28, 18 / 28, 3 / 28))  # fresh, MC, reset seconds
    assert gpo.reset_rate == pytest.approx(6 / 24) and gpo.reset_samples == pytest.approx(0.5)


def test_duplicate_states_counts_shared_prefixes_within_a_prompt():
    work = Workload([([9], None), ([8], None)], score=None, decode=None, spans=None)
    a = Rollout("a", 0, [1, 2, 3, 4], [(0, 2), (2, 4)], 1.0)
    b = Rollout("b", 0, [1, 2, 5, 6], [(0, 2), (2, 4)], 0.0)  # shares s_0 and s_1 with a
    c = Rollout("c", 0, [7, 2, 3, 4], [(0, 2), (2, 4)], 0.0)  # shares s_0 only
    d = Rollout("d", 1, [1, 2, 3, 4], [(0, 2), (2, 4)], 0.0)  # another prompt: nothing
    assert duplicate_states(work, [a, b, c, d]) == (8, 1 + 2 + 2)


def test_trained_resets_are_capped_by_the_batch_composition():
    fresh = Cost(seconds=1.0, calls=1, completions=8, tokens=80)
    reset = Cost(seconds=1.0, calls=1, completions=24, tokens=120)

    def gpo(ratio):
        return Measure("gpo", fresh, reset=reset, trajectories=8, resets=6, resets_per_fresh=ratio)

    assert gpo(math.inf).trained == 8 + 24  # every reset rollout trained
    assert gpo(1.0).trained == 8 + 8  # share 0.5: one reset per fresh sample, 16 surplus
    assert gpo(1 / 3).trained == 8 + 2  # share 0.25: floor(8 / 3)
    assert gpo(4.0).trained == 8 + 24  # room for more than were made
