"""The estimator's logic without Redis: samples, resets, reset advantages, batches."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace

import numpy as np
import pytest

from actors.engines import scripted
from actors.estimator import EstimatorConfig, EstimatorMetrics, estimate, estimate_batch
from actors.mc_config import paper_search
from actors.mc_search import find_critical_step
from actors.rollout import RolloutConfig
from actors.samples import BatchCounts, make_sample, search_input, token_advantages
from protocol.codec import decode, encode
from protocol.messages import Trajectory
from protocol.metrics import Metrics


def run_batch(trajs, engine, task, config, name: str = "estimator"):
    """`estimate_batch`, with its counts recorded on fresh metrics as the loop records them."""
    outputs, counts = asyncio.run(estimate_batch(trajs, engine, task, ToyTokenizer(), config, name))
    assert isinstance(counts, BatchCounts)
    m = EstimatorMetrics(Metrics("e"))
    m.record(counts)
    return outputs, m


def test_token_advantages_by_hand():
    got = token_advantages([(0, 2), (2, 3), (3, 6)], np.array([0.5, -0.25, 0.0]), 6)
    assert got.tolist() == [0.5, 0.5, -0.25, 0.0, 0.0, 0.0]


def traj(**kw) -> Trajectory:
    base = dict(
        id="train:0:1/0",
        run="r",
        ts=time.time(),
        prompt_id="train:0:1",
        task="scripted",
        answer="",
        kind="fresh",
        parent_id=None,
        reset_step=None,
        reset_value=None,
        prompt_len=1,
        prefix_token_ids=[scripted.BOS],
        completion_token_ids=[5, 3, 2, 6, 3, 2],
        logprobs=[-0.1, -0.2, -0.3, -0.4, -0.5, -0.6],
        step_spans=[(0, 3), (3, 6)],
        reward=1.0,
        policy_version=3,
        actor="a",
        gen_seconds=0.1,
    )
    return Trajectory(**{**base, **kw})


def test_make_sample_masks_prefix_and_aligns_arrays():
    s = make_sample(
        traj(prefix_token_ids=[0, 7, 8], prompt_len=3),
        np.arange(6, dtype=np.float32) / 8,
        np.zeros(0),
    )
    assert s.token_ids.tolist() == [0, 7, 8, 5, 3, 2, 6, 3, 2]
    assert s.loss_mask.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert s.logprobs.tolist() == pytest.approx([0, 0, 0, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6])
    assert s.advantages.tolist() == [0, 0, 0, 0, 0.125, 0.25, 0.375, 0.5, 0.625]
    assert s.id == "train:0:1/0" and s.policy_version == 3
    assert decode(encode(s)) == s  # a valid wire message


class TaskOver:
    """The scripted task behind the estimator's TaskPrompt-based interface."""

    name = "scripted"

    def __init__(self, problem):
        self.problem = problem

    def score(self, prompt, completion):
        return scripted.ScriptedTask().score(self.problem, completion)


class ToyTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return scripted.decode(ids)


class NoEngine:
    policy_version = 0

    async def generate(self, requests):
        raise AssertionError("a reset rollout needs no MC")


def cfg(**mc) -> EstimatorConfig:
    """The paper's search and reset requests (no reused continuations); `mc` overrides."""
    return EstimatorConfig(
        rollout=RolloutConfig(max_new_tokens=64),
        mc=paper_search(**mc),
        n_reset=3,
        reuse_mc_rollouts=False,
    )


def test_reset_rollout_advantage_is_reward_minus_reset_value():
    t = traj(
        kind="reset",
        id="reset:p/0/1",
        parent_id="p/0",
        reset_step=1,
        reset_value=0.25,
        reset_value_count=12,
        reward=1.0,
    )
    sample, reset = asyncio.run(estimate(t, NoEngine(), TaskOver(None), ToyTokenizer(), cfg()))
    assert reset is None
    assert sample.kind == "reset"
    assert sample.advantages.tolist() == [0.0] + [0.75] * 6
    # baselined with the other rollouts from the same state and the 12 MC continuations there
    assert (sample.group, sample.baseline_value, sample.baseline_count) == ("reset:p/0", 0.25, 12)


def test_fresh_trajectory_reset_at_the_pivotal_step():
    # Steps 0, 1 and 3 always stay right; step 2 is a coin flip and cannot be recovered:
    # V(s_0) = V(s_1) = V(s_2) = 0.5, and this trajectory failed at step 2, so V(s_3) = 0:
    # A = [0, 0, -0.5, 0] and the critical step is 2.
    problem = scripted.ScriptedProblem(stay_correct=(1.0, 1.0, 0.5, 1.0), recover=0.0)
    completion = [5, 3, 2, 6, 3, 2, 7, 4, 2, 5, 4, 2, scripted.EOS]
    spans = scripted.step_spans(completion)
    spans[-1] = (spans[-1][0], len(completion))  # EOS joins the last step
    t = traj(
        completion_token_ids=completion,
        logprobs=[-0.5] * len(completion),
        step_spans=spans,
        reward=0.0,
    )
    ((sample, reset),), m = run_batch(
        [t], scripted.ScriptedEngine(problem), TaskOver(problem), cfg(k=12)
    )
    assert reset is not None and reset.critical_step == 2
    assert reset.prefix_token_ids.tolist() == [scripted.BOS] + completion[: spans[2][0]]
    assert reset.value == pytest.approx(reset.step_values[2])
    assert abs(reset.advantages[2]) == max(abs(a) for a in reset.advantages)
    assert reset.n == 3 and reset.id == f"reset:{t.id}" and reset.selection == "advantage"
    assert reset.value_count == 12  # the continuations V(s_m) averages
    assert (sample.group, sample.baseline_count) == (t.prompt_id, 0)  # fresh: the prompt
    assert reset.step_values[-1] == 0.0  # V(s_T) is the trajectory's reward
    step2 = slice(1 + spans[2][0], 1 + spans[2][1])
    assert np.all(sample.advantages[step2] == np.float32(reset.advantages[2]))
    assert decode(encode(reset)) == reset
    assert m.rollouts._value.get() == 12 * 4


def test_selection_none_sends_no_reset_but_keeps_values():
    problem = scripted.ScriptedProblem(stay_correct=(1.0, 0.5), recover=0.0)
    completion = [5, 3, 2, 6, 4, 2]
    t = traj(
        completion_token_ids=completion, step_spans=scripted.step_spans(completion), reward=0.0
    )
    sample, reset = asyncio.run(
        estimate(
            t,
            scripted.ScriptedEngine(problem),
            TaskOver(problem),
            ToyTokenizer(),
            cfg(k=4, selection="none"),
        )
    )
    assert reset is None
    assert len(sample.step_values) == 3 and sample.step_values[-1] == 0.0


PROBLEM = scripted.ScriptedProblem(stay_correct=(1.0, 0.6, 0.5, 1.0), recover=0.1)


def two_rollouts() -> list[Trajectory]:
    """A won and a lost rollout of one scripted prompt that share their first steps."""
    wins = [5, 3, 2, 6, 6, 3, 2, 7, 7, 7, 3, 2, 5, 3, 2, scripted.EOS]
    fails = [5, 3, 2, 6, 6, 3, 2, 7, 7, 7, 4, 2, 5, 4, 2, scripted.EOS]
    batch = []
    for j, (completion, reward) in enumerate(((wins, 1.0), (fails, 0.0))):
        spans = scripted.step_spans(completion)
        spans[-1] = (spans[-1][0], len(completion))  # EOS joins the last step
        batch.append(
            traj(
                id=f"train:0:1/{j}",
                completion_token_ids=completion,
                logprobs=[-0.5] * len(completion),
                step_spans=spans,
                reward=reward,
            )
        )
    return batch


def test_a_batch_searches_together_and_equals_each_trajectory_alone():
    # Two fresh rollouts of one prompt and a reset rollout read together: the reset needs no
    # MC, the two searches share ONE generate call (uniform budget), and every output is the
    # one the trajectory gets alone (searches seeded from the trajectory id).
    problem, batch = PROBLEM, two_rollouts()
    reset = traj(id="r/0", kind="reset", parent_id="p/0", reset_step=1, reset_value=0.5)
    batch.insert(1, reset)

    def run(trajs):
        engine = scripted.ScriptedEngine(problem)
        out, m = run_batch(trajs, engine, TaskOver(problem), cfg(k=6))
        return out, engine, m

    together, engine, m = run(batch)
    assert engine.calls == 1 and m.estimated._value.get() == 2
    assert m.seconds._sum.get() > 0 and m.rollouts._value.get() == 2 * 6 * 4
    assert [s.id for s, _ in together] == [t.id for t in batch]
    assert together[1][1] is None and together[1][0].kind == "reset"
    for t, (sample, reset) in zip(batch, together, strict=True):
        ((alone_sample, alone_reset),), _, _ = run([t])
        assert encode(sample) == encode(replace(alone_sample, ts=sample.ts))
        if reset is None:
            assert alone_reset is None
        else:
            assert encode(reset) == encode(replace(alone_reset, ts=reset.ts))
    assert any(reset is not None for _, reset in together)

    # share_states: a state both rollouts reach is searched once; the counter counts what
    # was generated, and both samples carry the one value of each shared state
    engine = scripted.ScriptedEngine(problem)
    shared, m = run_batch(batch, engine, TaskOver(problem), cfg(k=6, share_states=True))
    fresh = [t for t in batch if t.kind == "fresh"]
    states = [[tuple(t.completion_token_ids[:start]) for start, _ in t.step_spans] for t in fresh]
    common = len(set(states[0]) & set(states[1]))
    assert common >= 1 and engine.calls == 1
    assert m.rollouts._value.get() == 6 * len(set(states[0]) | set(states[1])) < 2 * 6 * 4
    a, b = (shared[i][0] for i, t in enumerate(batch) if t.kind == "fresh")
    same = [i for i in range(4) if states[0][i] == states[1][i]]
    np.testing.assert_array_equal(a.step_values[same], b.step_values[same])


def test_reuse_mc_rollouts_answers_resets_with_the_searchs_own_continuations():
    # The reset rollouts are the first n_reset (3) continuations the search drew from s_m,
    # made into reset trajectories as an actor makes them; no reset request goes out.
    batch = two_rollouts()
    config = cfg(k=6)
    asked, _ = run_batch(batch, scripted.ScriptedEngine(PROBLEM), TaskOver(PROBLEM), config)
    engine = scripted.ScriptedEngine(PROBLEM)
    reuse = replace(config, reuse_mc_rollouts=True)
    got, m = run_batch(batch, engine, TaskOver(PROBLEM), reuse, "est-1")
    assert engine.calls == 1  # the MC search only
    requests = [r for _, r in asked if r is not None]
    assert requests and all(r is None for _, r in got)
    assert [encode(s) for s, _ in got[:2]] == [
        encode(replace(s, ts=g.ts)) for (s, _), (g, _) in zip(asked, got[:2], strict=True)
    ]
    extra = [s for s, _ in got[2:]]
    assert [s.id for s in extra] == [f"{r.id}/{j}" for r in requests for j in range(3)]
    assert m.reused._value.get() == 3 * len(requests) and m.rollouts._value.get() == 2 * 6 * 4
    for k, r in enumerate(requests):
        # the search from r's trajectory alone gives the continuations at s_m
        parent = next(t for t in batch if t.id == r.trajectory_id)
        subject, mc = search_input(parent, ToyTokenizer(), config.rollout, config.mc)
        found = asyncio.run(
            find_critical_step(
                scripted.ScriptedEngine(PROBLEM),
                TaskOver(PROBLEM),
                subject,
                mc,
                decode=scripted.decode,
            )
        )
        assert found.critical_step == r.critical_step
        for j, s in enumerate(extra[3 * k : 3 * k + 3]):
            completion = found.critical_completions[j].token_ids
            assert s.kind == "reset" and s.policy_version == engine.policy_version
            assert s.token_ids.tolist() == r.prefix_token_ids.tolist() + completion
            assert s.loss_mask.sum() == len(completion)
            kept = r.prefix_token_ids[r.prompt_len :].tolist()
            reward = TaskOver(PROBLEM).score(None, scripted.decode(kept + completion))
            assert s.reward == reward == found.rewards[r.critical_step][j]
            n = len(r.prefix_token_ids)
            np.testing.assert_allclose(s.advantages[n:], reward - r.value, rtol=1e-6)
            assert not s.advantages[:n].any()
            # the siblings are the continuations: nothing independent of them to pool
            assert (s.group, s.baseline_value, s.baseline_count) == (r.id, r.value, 0)


def test_reuse_mc_rollouts_answers_one_reset_per_state_of_a_batch():
    # Two copies of one rollout with share_states: the same values, the same critical state,
    # the same continuations: the first copy's reset is answered, the second stays a request.
    one = two_rollouts()[1]
    batch = [one, replace(one, id="train:0:1/9")]
    config = cfg(k=4, share_states=True)
    config = replace(config, reuse_mc_rollouts=True)
    got, m = run_batch(batch, scripted.ScriptedEngine(PROBLEM), TaskOver(PROBLEM), config)
    (first, r1), (second, r2), *extra = got
    np.testing.assert_array_equal(first.step_values, second.step_values)
    assert r1 is None and r2 is not None and r2.trajectory_id == "train:0:1/9"
    assert [s.id for s, _ in extra] == [f"reset:{one.id}/{j}" for j in range(3)]
    assert m.rollouts._value.get() == 4 * len(one.step_spans)  # one search's worth


def test_failed_only_targets_search_failures_and_pass_successes_on_unsearched():
    # the same two rollouts as above, one failed and one right: with targets "failed" only
    # the failure is searched; the success goes on as a sample with no step values (the
    # learner baselines it by its group) and never gets a reset
    batch = two_rollouts()
    assert sorted(t.reward for t in batch) == [0.0, 1.0]
    config = cfg(k=6, targets="failed")
    got, m = run_batch(batch, scripted.ScriptedEngine(PROBLEM), TaskOver(PROBLEM), config)
    for t, (sample, reset) in zip(batch, got, strict=True):
        assert sample.id == t.id and sample.kind == "fresh"
        if t.reward == 1.0:
            assert reset is None and len(sample.step_values) == 0
            assert not sample.advantages.any()
        else:
            assert len(sample.step_values) == len(t.step_spans) + 1
    assert m.unsearched._value.get() == 1 and m.estimated._value.get() == 1
    assert m.rollouts._value.get() == 6 * len(next(t for t in batch if t.reward == 0).step_spans)


def test_default_search_bisects_failures_and_trains_its_own_continuations_as_resets():
    # The defaults (failed only, bisection, shared states, reused continuations) on the won
    # and the lost rollout: the success goes on unsearched with no reset; the failure is
    # bisected (K at s_0 and at midpoints only) and its reset rollouts are the continuations
    # drawn at s_m, published as reset samples: no reset request reaches the actors.
    defaults = EstimatorConfig()
    assert (defaults.mc.targets, defaults.mc.budget) == ("failed", "bisect")
    assert defaults.mc.share_states and defaults.reuse_mc_rollouts
    config = replace(
        defaults, rollout=RolloutConfig(max_new_tokens=64), n_reset=3, mc=replace(defaults.mc, k=6)
    )
    batch = two_rollouts()
    got, m = run_batch(batch, scripted.ScriptedEngine(PROBLEM), TaskOver(PROBLEM), config)
    (won, won_reset), (lost, lost_reset), *resets = got
    assert won.id == batch[0].id and won_reset is None and len(won.step_values) == 0
    assert lost.id == batch[1].id and lost_reset is None  # answered here, not requested
    assert len(lost.step_values) == len(batch[1].step_spans) + 1
    steps = len(batch[1].step_spans)
    assert m.rollouts._value.get() == 6 * (1 + math.ceil(math.log2(steps)))
    assert m.rollouts._value.get() < 6 * steps  # fewer than the uniform search's
    assert [s.id for s, _ in resets] == [f"reset:{lost.id}/{j}" for j in range(3)]
    assert all(s.kind == "reset" and r is None for s, r in resets)
    assert m.unsearched._value.get() == 1 and m.estimated._value.get() == 1


def test_batch_messages_must_be_positive():
    with pytest.raises(ValueError, match="batch_messages"):
        EstimatorConfig(batch_messages=0)
