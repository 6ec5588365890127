"""Batch choice, advantage modes, micro-batch plans, collation, dedup and staleness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.batches import (
    choose_batch,
    collate,
    group_row_advantages,
    plan_micro_batches,
    token_advantages,
)
from learner.dedup import TrainedIds, admit
from learner.feeder import epoch_order
from tests.unit.learner_fixtures import make_sample


def test_choose_batch_honours_reset_fraction_oldest_first():
    kinds = ["fresh"] * 6 + ["reset"] * 6
    assert choose_batch(kinds, 4, 0.5) == [0, 1, 6, 7]
    assert choose_batch(kinds, 4, 0.25) == [0, 1, 2, 6]
    assert choose_batch(kinds, 4, 1.0) == [6, 7, 8, 9]


def test_choose_batch_fills_shortfall_with_the_other_kind():
    assert choose_batch(["fresh"] * 5, 4, 0.5) == [0, 1, 2, 3]  # no resets: plain PPO
    assert choose_batch(["reset", "fresh", "reset", "reset"], 4, 0.25) == [0, 1, 2, 3]
    assert choose_batch(["fresh", "reset"], 4, 0.5) == [0, 1]  # pool smaller than batch


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
    trained = TrainedIds(committed={"c"}, uncommitted={"u"})
    offered = [
        make_sample("c"),
        make_sample("u"),
        make_sample("new", version=3),
        make_sample("new", version=3),  # the same id twice in one read
        make_sample("old", version=1),  # lag 4 > 3
        make_sample("edge", version=2),  # lag 3: kept
        make_sample("buf", version=4),
    ]
    v = admit(offered, trained, {"buf"}, version=5, max_lag=3)
    assert v.keep == [2, 5] and v.lags == [2, 3]
    assert v.duplicate == [0, 1, 3, 6]
    assert v.stale == [4]


def test_trained_ids_commit_moves_uncommitted():
    t = TrainedIds()
    t.add(["a", "b"])
    assert "a" in t and t.committed == set()
    t.commit()
    assert t.committed == {"a", "b"} and t.uncommitted == set() and "b" in t


def test_feeder_order_is_a_seeded_permutation_per_epoch():
    a, b = epoch_order(10, seed=1, epoch=0), epoch_order(10, seed=1, epoch=1)
    assert sorted(a) == sorted(b) == list(range(10))
    assert a == epoch_order(10, seed=1, epoch=0) and a != b
    assert a != epoch_order(10, seed=2, epoch=0)
