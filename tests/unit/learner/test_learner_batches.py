"""Advantage modes and baselines, micro-batch plans, collation, dedup and staleness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.batches import (
    collate,
    group_row_advantages,
    plan_micro_batches,
    reset_baselines,
    token_advantages,
)
from learner.dedup import TrainedIds, admit, dedup_floor
from learner.feeder import epoch_order
from tests.support.learner import make_sample


def test_group_advantages_subtract_the_prompt_mean():
    adv = group_row_advantages([1.0, 0.0, 1.0, 1.0, 0.0], ["a", "a", "b", "b", "c"])
    np.testing.assert_array_equal(adv, np.array([0.5, -0.5, 0.0, 0.0, 0.0], np.float32))


def test_token_advantages_by_mode():
    s = [
        make_sample("x", prompt_len=2, completion_len=3, reward=1.0, prompt_id="a", advantage=0.25),
        make_sample("y", prompt_len=3, completion_len=2, reward=0.0, prompt_id="a", advantage=-2.0),
    ]
    mc = token_advantages(s, "mc")
    np.testing.assert_array_equal(mc[0], [0, 0, 0.25, 0.25, 0.25])
    np.testing.assert_array_equal(mc[1], [0, 0, 0, -2, -2])
    group = token_advantages(s, "group")
    np.testing.assert_array_equal(group[0], [0, 0, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(group[1], [0, 0, 0, -0.5, -0.5])
    assert all((a == 0).all() for a in token_advantages(s, "gae"))
    with pytest.raises(ValueError):
        token_advantages(s, "nope")


def test_reset_baselines_leave_one_out_by_hand():
    # state A: 3 rollouts from it in the batch, V = 0.25 over K = 4 continuations
    # state B: alone, V = 0.5 over K = 4; state C: alone, nothing to pool (K = 0)
    got = reset_baselines(
        rewards=[1.0, 0.0, 1.0, 1.0, 0.0],
        groups=["A", "A", "A", "B", "C"],
        values=[0.25, 0.25, 0.25, 0.5, 0.75],
        counts=[4, 4, 4, 4, 0],
    )
    want = [
        (0.0 + 1.0 + 4 * 0.25) / (2 + 4),  # 2/6
        (1.0 + 1.0 + 4 * 0.25) / (2 + 4),  # 3/6
        (1.0 + 0.0 + 4 * 0.25) / (2 + 4),  # 2/6
        (4 * 0.5) / 4,  # the MC continuations alone
        0.75,  # nothing to pool: V(s_m)
    ]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # K = 0 (the reset rollouts are the continuations): siblings only
    np.testing.assert_allclose(
        reset_baselines([1.0, 0.0, 0.0], ["A"] * 3, [1 / 3] * 3, [0] * 3), [0.0, 0.5, 0.5]
    )
    assert reset_baselines([], [], [], []).shape == (0,)


def test_reset_rows_get_their_state_baseline_in_mc_and_group_modes():
    def reset(sid, reward, group, value=0.25, count=4):
        return make_sample(
            sid,
            prompt_len=2,
            completion_len=2,
            reward=reward,
            kind="reset",
            prompt_id="a",
            group=group,
            baseline_value=value,
            baseline_count=count,
            advantage=reward - value,  # what the estimator writes: reward - V(s_m)
        )

    fresh = [
        make_sample("f0", prompt_len=2, completion_len=2, reward=1.0, prompt_id="a", advantage=0.1),
        make_sample("f1", prompt_len=2, completion_len=2, reward=0.0, prompt_id="a", advantage=0.2),
    ]
    resets = [reset("r0", 1.0, "reset:x"), reset("r1", 0.0, "reset:x"), reset("r2", 1.0, "reset:y")]
    batch = fresh + resets
    b0, b1 = (0.0 + 1.0) / 5, (1.0 + 1.0) / 5  # LOO with K = 4 at V = 0.25: (R_other + 1) / 5
    b2 = 1.0 / 4  # alone: the 4 continuations
    loo = [1.0 - b0, 0.0 - b1, 1.0 - b2]
    for mode in ("mc", "group"):
        got = token_advantages(batch, mode)
        np.testing.assert_allclose([a[-1] for a in got[2:]], loo, rtol=1e-6)
        assert all(a[0] == 0 for a in got)  # prefix tokens
        value = token_advantages(batch, mode, "value")
        np.testing.assert_allclose([a[-1] for a in value[2:]], [0.75, -0.25, 0.75])
    # fresh rows: their step advantages in mc mode; in group mode, the prompt's fresh rollouts
    # alone form the group (mean 0.5), not pooled with the resets of that prompt
    assert [a[-1] for a in token_advantages(batch, "mc")[:2]] == pytest.approx([0.1, 0.2])
    assert [a[-1] for a in token_advantages(batch, "group")[:2]] == [0.5, -0.5]
    with pytest.raises(ValueError):
        token_advantages(batch, "mc", "nope")


def test_micro_batches_respect_the_token_budget():
    lengths = [5, 9, 3, 9, 4, 20]
    plan = plan_micro_batches(lengths, token_budget=18)
    assert plan == [[5], [1, 3], [0, 4, 2]]  # 20 alone (over budget); 2 x 9; 3 x 5
    assert sorted(i for mb in plan for i in mb) == list(range(6))
    for mb in plan[1:]:
        assert len(mb) * max(lengths[i] for i in mb) <= 18


def test_collate_is_target_aligned_and_masks_prefix_and_padding():
    a = make_sample("a", prompt_len=2, completion_len=2, advantage=1.0)
    b = make_sample("b", prompt_len=1, completion_len=4, advantage=2.0)
    mb = collate([a, b], token_advantages([a, b], "mc"), [0, 1])
    assert mb.input_ids.shape == (2, 5)
    assert mb.input_ids[0, 4] == 0 and mb.attention_mask[0].tolist() == [1, 1, 1, 1, 0]
    # target t predicts token t+1: a's completion tokens 2, 3 are targets 1, 2
    assert mb.mask.tolist() == [[False, True, True, False], [True, True, True, True]]
    assert mb.advantages.tolist() == [[0, 1, 1, 0], [2, 2, 2, 2]]
    assert torch.allclose(mb.behaviour[mb.mask], torch.tensor(float(a.logprobs[-1])))
    assert mb.rewards.tolist() == [1.0, 1.0]


def test_admit_drops_duplicates_and_stale_samples():
    trained = TrainedIds(committed={"c": 4}, uncommitted={"u": 4})
    offered = [
        make_sample("c"),
        make_sample("u"),
        make_sample("new", version=3),
        make_sample("new", version=3),  # the same id twice in one read
        make_sample("old", version=1),  # lag 4 > 3
        make_sample("edge", version=2),  # lag 3: kept
        make_sample("buf", version=4),
    ]
    v = admit(offered, trained, {"buf"}, step=5, max_lag=3)
    assert v.keep == [2, 5] and v.lags == [2, 3]
    assert v.duplicate == [0, 1, 3, 6]
    assert v.stale == [4]


def test_trained_ids_commit_moves_uncommitted():
    t = TrainedIds()
    t.add([make_sample("a", version=1), make_sample("b", version=2)])
    assert "a" in t and t.committed == {}
    t.commit()
    assert t.committed == {"a": 1, "b": 2} and t.uncommitted == {} and "b" in t


def test_dedup_set_stays_bounded_and_forgets_only_what_would_be_stale():
    """A long run at max_lag 2 with 8 samples per update: the set holds at most
    (max_lag + 2) versions' samples, and a sample it forgot is still refused (as stale)."""
    t, max_lag, most = TrainedIds(), 2, 0
    for version in range(1000):  # one update per version, samples up to max_lag old
        batch = [
            make_sample(f"v{version}/{j}", version=version - j % (max_lag + 1)) for j in range(8)
        ]
        assert admit(batch, t, set(), version, max_lag).keep == list(range(8))
        t.add(batch)
        t.commit()
        t.prune(dedup_floor(version + 1, max_lag))
        most = max(most, len(t.all()))
    assert most <= 8 * (max_lag + 2)
    # every sample of the last update is remembered: a redelivery is a duplicate
    again = [make_sample(f"v999/{j}", version=999 - j % 3) for j in range(8)]
    assert admit(again, t, set(), 1000, max_lag).duplicate == list(range(8))
    # a forgotten one comes back: refused all the same, as stale
    old = [make_sample("v500/0", version=500)]
    assert "v500/0" not in t and admit(old, t, set(), 1000, max_lag).stale == [0]


def test_dedup_floor_keeps_what_admit_can_still_keep():
    """Every policy version admit keeps at `version` is >= the floor."""
    for version in range(0, 20):
        for max_lag in range(0, 5):
            kept = [
                v
                for v in range(-5, version + 1)
                if admit([make_sample("x", version=v)], TrainedIds(), set(), version, max_lag).keep
            ]
            assert min(kept) >= dedup_floor(version, max_lag)


def test_feeder_order_is_a_seeded_permutation_per_epoch():
    a, b = epoch_order(10, seed=1, epoch=0), epoch_order(10, seed=1, epoch=1)
    assert sorted(a) == sorted(b) == list(range(10))
    assert a == epoch_order(10, seed=1, epoch=0) and a != b
    assert a != epoch_order(10, seed=2, epoch=0)


def test_unsearched_fresh_rows_get_their_group_advantage_in_mc_mode():
    # prompt a: two searched rows (step advantages kept) and two the estimator passed on
    # without a search (mc.targets): those get reward - mean of the prompt's fresh rewards
    rows = [
        make_sample("s0", prompt_len=1, completion_len=2, reward=1.0, prompt_id="a", advantage=0.3),
        make_sample(
            "s1", prompt_len=1, completion_len=2, reward=0.0, prompt_id="a", advantage=-0.2
        ),
        make_sample(
            "u0", prompt_len=1, completion_len=2, reward=1.0, prompt_id="a", searched=False
        ),
        make_sample(
            "u1", prompt_len=1, completion_len=2, reward=1.0, prompt_id="a", searched=False
        ),
    ]
    got = [a[-1] for a in token_advantages(rows, "mc")]
    assert got == pytest.approx([0.3, -0.2, 0.25, 0.25])  # mean reward 0.75


def test_admit_refuses_samples_longer_than_the_cap_alone():
    offered = [
        make_sample("ok", prompt_len=4, completion_len=6, version=5),  # 10 tokens
        make_sample("long", prompt_len=4, completion_len=7, version=5),  # 11 > 10
        make_sample("old", prompt_len=4, completion_len=9, version=0),  # stale wins
    ]
    v = admit(offered, TrainedIds(), set(), step=5, max_lag=3, max_tokens=10)
    assert (v.keep, v.stale, v.too_long) == ([0], [2], [1])
    assert admit(offered, TrainedIds(), set(), step=5, max_lag=3).too_long == []  # no cap
