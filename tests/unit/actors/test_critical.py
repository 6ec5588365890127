"""Critical-step math against hand-computed numbers (actors/critical.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from actors.critical import (
    choose_critical_step,
    critical_step_posterior,
    derive_seed,
    plan_adaptive_round,
    posterior_choice,
    segment_log_evidence,
    step_advantages,
    step_values,
)


def test_step_values_are_means_then_own_reward():
    v = step_values([[1, 0, 1, 1], [0, 0, 1, 0], [0, 0, 0]], final_reward=1.0)
    np.testing.assert_array_equal(v, [0.75, 0.25, 0.0, 1.0])


def test_step_values_rejects_a_boundary_without_rewards():
    with pytest.raises(ValueError, match="boundary 1"):
        step_values([[1.0], []], 0.0)


def test_advantages_are_next_value_minus_value():
    np.testing.assert_array_equal(
        step_advantages(np.array([0.75, 0.25, 0.0, 1.0])), [-0.5, -0.25, 1.0]
    )


def test_advantage_selection_is_argmax_abs():
    assert choose_critical_step(np.array([-0.5, -0.25, 0.0]), "advantage") == 0
    assert choose_critical_step(np.array([0.1, -0.6, 0.5]), "advantage") == 1
    assert choose_critical_step(np.array([-0.5, -0.25, 1.0]), "advantage") == 2


def test_advantage_ties_go_to_the_earliest_step():
    assert choose_critical_step(np.array([0.25, -0.25, 0.1]), "advantage") == 0
    # 2/3 - 1/3 is one ulp below 1 - 2/3: still a tie.
    adv = step_advantages(np.array([1 / 3, 2 / 3, 1.0]))
    assert adv[1] > adv[0]
    assert choose_critical_step(adv, "advantage") == 0


def test_all_zero_advantages_give_no_critical_step():
    assert choose_critical_step(np.zeros(5), "advantage") is None
    assert choose_critical_step(step_advantages(np.array([1.0, 1.0, 1.0])), "advantage") is None


def test_none_selection_never_resets():
    assert choose_critical_step(np.array([0.9, 0.0]), "none") is None


def test_random_selection_is_uniform_and_ignores_advantages():
    rng = np.random.default_rng(7)
    expected = np.random.default_rng(7).integers(4, size=4000)
    picks = [
        choose_critical_step(np.array([0.0, 0.0, 1.0, 0.0]), "random", rng) for _ in range(4000)
    ]
    np.testing.assert_array_equal(picks, expected)
    counts = np.bincount(picks, minlength=4)
    assert counts.min() > 900  # 1000 each expected; binomial sd about 27
    with pytest.raises(ValueError, match="rng"):
        choose_critical_step(np.zeros(3), "random")


def test_segment_evidence_is_the_beta_bernoulli_integral():
    # positions: (1 success of 1), (0 successes of 1); prior Beta(1, 1).
    ev = segment_log_evidence(np.array([1.0, 0.0]), np.array([1.0, 1.0]), prior=1.0)
    assert math.exp(ev[0, 1]) == pytest.approx(1 / 2)  # integral of v
    assert math.exp(ev[1, 2]) == pytest.approx(1 / 2)  # integral of 1 - v
    assert math.exp(ev[0, 2]) == pytest.approx(1 / 6)  # integral of v (1 - v)
    assert ev[1, 0] == -math.inf


def test_posterior_of_one_step_matches_hand_bayes():
    # One step: s_0 has 0 of 2 successes, s_T (reward 1) weighs 2 pseudo-rewards; prior
    # Beta(1, 1), change probability 1/2. Split: (1/3)(1/3) = 1/9; one run (2 of 4): 1/30.
    # P(split) = (1/9) / (1/9 + 1/30) = 10/13, and a split always makes step 0 critical.
    probs = critical_step_posterior(
        np.array([0.0]),
        np.array([2]),
        1.0,
        change_prob=0.5,
        prior=1.0,
        final_weight=2.0,
        draws=40_000,
        rng=np.random.default_rng(0),
    )
    assert probs.shape == (2,)
    assert probs[0] == pytest.approx(10 / 13, abs=0.01)
    assert probs.sum() == pytest.approx(1.0)


def test_posterior_finds_a_clear_jump_and_a_flat_trajectory():
    kw = dict(change_prob=0.3, prior=0.5, final_weight=16.0, draws=2000)
    rng = np.random.default_rng(1)
    # Values 1, 1, 1, 0, 0 with 8 rewards each and reward 0: the jump is step 2.
    sums = np.array([8.0, 8.0, 8.0, 0.0])
    probs = critical_step_posterior(sums, np.full(4, 8), 0.0, rng=rng, **kw)
    assert posterior_choice(probs) == 2 and probs[2] > 0.95
    # Every reward 0 and reward 0: no critical step is the most probable outcome.
    probs = critical_step_posterior(np.zeros(4), np.full(4, 8), 0.0, rng=rng, **kw)
    assert posterior_choice(probs) is None


def test_posterior_choice_prefers_earliest_and_reports_none_last():
    assert posterior_choice(np.array([0.2, 0.5, 0.3])) == 1
    assert posterior_choice(np.array([0.4, 0.4, 0.2])) == 0
    assert posterior_choice(np.array([0.2, 0.3, 0.5])) is None
    # With the raw advantages, the paper's rule decides whether a step exists.
    assert posterior_choice(np.array([0.2, 0.3, 0.5]), np.array([0.0, -0.25])) == 1
    assert posterior_choice(np.array([0.2, 0.3, 0.5]), np.zeros(2)) is None
    assert posterior_choice(np.array([0.6, 0.1, 0.3]), np.zeros(2)) is None


PLAN = dict(budget_left=100, step_k=2, max_k=16, confidence=0.9, candidate_prob=0.05)


def test_plan_samples_only_the_boundaries_of_steps_in_play():
    # T = 4; steps 0 and 1 in play -> boundaries 0, 1 (step 0) and 1, 2 (step 1).
    probs = np.array([0.7, 0.25, 0.02, 0.02, 0.01])
    np.testing.assert_array_equal(plan_adaptive_round(probs, np.full(4, 2), **PLAN), [2, 2, 2, 0])


def test_plan_stops_when_confident():
    probs = np.array([0.95, 0.03, 0.01, 0.01, 0.0])
    assert plan_adaptive_round(probs, np.full(4, 2), **PLAN).sum() == 0


def test_plan_respects_budget_and_cap_in_probability_order():
    probs = np.array([0.25, 0.7, 0.02, 0.02, 0.01])
    # Step 1 first (boundaries 1, 2) takes all 3 rollouts left; none remain for step 0.
    plan = plan_adaptive_round(probs, np.full(4, 2), **{**PLAN, "budget_left": 3})
    np.testing.assert_array_equal(plan, [0, 2, 1, 0])
    # Boundary 1 already holds 15 of at most 16.
    plan = plan_adaptive_round(probs, np.array([2, 15, 2, 2]), **PLAN)
    np.testing.assert_array_equal(plan, [2, 1, 2, 0])


def test_plan_samples_everywhere_while_no_critical_step_is_in_play():
    probs = np.array([0.5, 0.0, 0.0, 0.0, 0.5])
    np.testing.assert_array_equal(plan_adaptive_round(probs, np.full(4, 2), **PLAN), [2, 2, 2, 2])


def test_derived_seeds_are_stable_distinct_and_31_bit():
    seeds = {derive_seed(0, r, b) for r in range(10) for b in range(30)}
    assert len(seeds) == 300
    assert all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(5, 1, 2) == derive_seed(5, 1, 2) != derive_seed(6, 1, 2)
