"""Policy lag across learner restarts: counted in steps along the lineage of the weights."""

from __future__ import annotations

import logging

import pytest

from learner.checkpoint import load_lineage, save_lineage
from learner.dedup import TrainedIds, admit, dedup_floor
from learner.lineage import NO_RESTARTS
from tests.support.learner import make_sample

# Checkpoint every 5 updates: the checkpoint holds step 5 (version 5); versions 6..9 are
# published and lost with a kill; the restart publishes version 10 holding step 5.
RESTARTED = NO_RESTARTS.branch(10, 5)


def test_without_restarts_a_version_holds_its_own_number_of_updates():
    assert [NO_RESTARTS.step_of(v) for v in range(4)] == [0, 1, 2, 3]
    assert NO_RESTARTS.lag(7, 3) == 4 and NO_RESTARTS.lag(3, 7) == 0


def test_a_restart_starts_a_branch_at_its_checkpoints_step():
    assert [RESTARTED.step_of(v) for v in (5, 6, 9, 10, 11, 12)] == [5, 6, 9, 5, 6, 7]
    # a sample of the checkpoint's lineage keeps its lag: version 1 is 4 updates behind
    # step 5 (counted in versions it would be 9 behind version 10)
    assert RESTARTED.lag(5, 1) == 4
    # a rolled-back version counts at its depth: behind only once the new branch passes it
    assert [RESTARTED.lag(step, 9) for step in (5, 9, 10, 13)] == [0, 0, 1, 4]
    # a second kill before the next checkpoint (version 12, step 7, lost): again step 5
    twice = RESTARTED.branch(13, 5)
    assert [twice.step_of(v) for v in (9, 10, 12, 13, 14)] == [9, 5, 7, 5, 6]


def test_a_branch_that_changes_nothing_is_not_recorded_and_versions_only_grow():
    assert NO_RESTARTS.branch(6, 6) is NO_RESTARTS  # killed right after a checkpoint
    with pytest.raises(ValueError, match="not above"):
        RESTARTED.branch(10, 3)


def test_pending_samples_are_not_aged_by_a_restart():
    """Max lag 4: the samples pending at the kill (versions 1..9: trained in the rolled-back
    updates 6..9, or read ahead) are all admitted at the restart's step; counted in
    versions, 1..5 were dropped as stale."""
    pending = [make_sample(f"s{v}", version=v) for v in range(1, 10)]
    kept = admit(pending, TrainedIds(), set(), step=5, max_lag=4, lineage=RESTARTED)
    assert kept.keep == list(range(9)) and kept.stale == []
    assert kept.lags == [4, 3, 2, 1, 0, 0, 0, 0, 0]
    by_version = admit(pending, TrainedIds(), set(), step=10, max_lag=4)
    assert by_version.stale == [0, 1, 2, 3, 4]  # what the restart used to do


def test_dedup_set_keeps_steps_so_its_floor_holds_across_a_restart():
    t = TrainedIds()
    t.add([make_sample("a", version=9), make_sample("b", version=11)], RESTARTED)
    assert t.uncommitted == {"a": 9, "b": 6}
    t.commit()
    assert t.prune(dedup_floor(11, 4)) == 0  # floor 6: both kept
    # floor 7: "b" (step 6) goes; "a" (version 9, a rolled-back step 9) stays, though
    # counted in versions it was the older one
    assert t.prune(dedup_floor(12, 4)) == 1 and "a" in t and "b" not in t


def test_the_lineage_file_round_trips_and_a_damaged_one_falls_back_with_a_warning(tmp_path, caplog):
    assert load_lineage(tmp_path) == NO_RESTARTS  # none written yet
    save_lineage(tmp_path, RESTARTED.branch(13, 5))
    assert load_lineage(tmp_path).starts == ((0, 0), (10, 5), (13, 5))
    (tmp_path / "lineage.json").write_text("[[3, 1]]")
    with caplog.at_level(logging.WARNING):
        assert load_lineage(tmp_path) == NO_RESTARTS
    assert "counting policy lag in versions" in caplog.text
