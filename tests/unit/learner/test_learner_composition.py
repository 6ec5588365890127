"""Batch composition (`learner.composition.plan_batch`) under every mix of arrivals."""

from __future__ import annotations

import itertools

import pytest

from learner.composition import BatchPlan, batch_targets, plan_batch

F, R = "fresh", "reset"


def plan(kinds, mode="share", size=4, frac=0.5, full=False, drained=False) -> BatchPlan:
    return plan_batch(kinds, mode, size, frac, full=full, drained=drained)


def test_targets_of_both_modes():
    assert batch_targets("share", 64, 0.5) == (32, 32)
    assert batch_targets("share", 64, 0.25) == (48, 16)
    assert batch_targets("share", 64, 0.0) == (64, 0)
    assert batch_targets("fresh", 64, 0.5) == (64, 64)  # resets on top: half of 128
    assert batch_targets("fresh", 64, 0.2) == (64, 16)
    assert batch_targets("fresh", 16, 0.75) == (16, 48)
    with pytest.raises(ValueError):
        batch_targets("fresh", 4, 1.0)


def test_share_mode_takes_the_exact_share_oldest_first():
    kinds = [R, R, R, F, R, F, F, R]
    assert plan(kinds) == BatchPlan(take=[0, 1, 3, 5])
    # the configured share is honoured even when one kind is three times as common
    kinds = [R, R, R, F] * 8
    got = plan(kinds, size=16)
    assert [kinds[i] for i in got.take].count(R) == 8 and len(got.take) == 16


def test_share_mode_reads_ahead_while_a_kind_is_missing():
    # 1 fresh and 7 resets: a full batch's worth, but the share wants 2 fresh: read on
    assert plan([R, R, R, F, R, R, R, R]) == BatchPlan()


def test_a_drained_stream_lets_the_other_kind_fill_in():
    got = plan([R, R, R, F, R], drained=True)
    assert got == BatchPlan(take=[0, 1, 2, 3], shortfall="fresh")
    got = plan([F, F, F, R, F], drained=True)
    assert got == BatchPlan(take=[0, 1, 2, 3], shortfall="reset")
    assert plan([F, F, F, F, F], drained=True) == BatchPlan(take=[0, 1, 2, 3], shortfall="reset")
    # less than a batch: keep waiting, whatever the stream says
    assert plan([F, R, R], drained=True) == BatchPlan()


def test_a_full_buffer_drops_surplus_resets_while_fresh_samples_are_short():
    kinds = [R, R, F, R, R, R, R, R]  # the bound is 8; the batch wants 2 fresh, 2 resets
    assert plan(kinds, full=True) == BatchPlan(evict=[0, 1, 3, 4, 5])  # the oldest 5 resets
    # fresh samples in surplus are never dropped: they fill the batch
    got = plan([F, F, F, F, F, F, R, F], full=True)
    assert got == BatchPlan(take=[0, 1, 2, 6], shortfall="reset")


def test_fresh_mode_adds_resets_on_top_up_to_the_share():
    kinds = [F, R, R, F, R, F, R, R, F, R]
    assert plan(kinds, mode="fresh") == BatchPlan(take=[0, 1, 2, 3, 4, 5, 6, 8])
    # not enough resets yet: read ahead, then take what there is once the stream is dry
    assert plan([F, F, R, F, F], mode="fresh") == BatchPlan()
    got = plan([F, F, R, F, F], mode="fresh", drained=True)
    assert got == BatchPlan(take=[0, 1, 2, 3, 4], shortfall="reset")
    # no resets at all (plain PPO through a fresh-mode learner)
    got = plan([F] * 6, mode="fresh", full=True)
    assert got == BatchPlan(take=[0, 1, 2, 3], shortfall="reset")
    # fresh short and the buffer full of resets: drop the surplus
    assert plan([F, R, R, R, R, R, R, R], mode="fresh", full=True) == BatchPlan(evict=[1, 2, 3])
    # fresh short on a dry stream: resets stand in for the missing fresh ones
    got = plan([F, R, R, R, R, R, R], mode="fresh", drained=True)
    assert got == BatchPlan(take=[0, 1, 2, 3, 4, 5, 6], shortfall="fresh")


@pytest.mark.parametrize("mode", ["share", "fresh"])
def test_every_mix_of_arrivals_is_sound(mode):
    """Exhaustively over buffers of up to 10 samples: a plan takes or evicts or waits, never
    both; a taken batch is the exact composition unless it names its shortfall; nothing is
    taken twice; a full buffer never waits (no livelock)."""
    size, frac = 4, 0.5
    want_f, want_r = batch_targets(mode, size, frac)
    bound = want_f + want_r + 2
    for n in range(bound + 1):
        for kinds in itertools.product((F, R), repeat=n):
            for full, drained in itertools.product((n >= bound,), (False, True)):
                got = plan(kinds, mode, size, frac, full=full, drained=drained)
                assert not (got.take and got.evict)
                assert got.take == sorted(set(got.take))
                taken = [kinds[i] for i in got.take]
                if got.take and got.shortfall is None:
                    assert (taken.count(F), taken.count(R)) == (want_f, want_r)
                if got.shortfall:
                    assert len(got.take) >= min(size, want_f)
                    assert taken.count(got.shortfall) < (want_f if got.shortfall == F else want_r)
                if full:
                    assert got.take or got.evict
                assert all(kinds[i] == R for i in got.evict)
