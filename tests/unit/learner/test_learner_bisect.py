"""The learner's bisection of a batch it died training (learner/bisect.py), by hand."""

from __future__ import annotations

import pytest

from learner.bisect import (
    Suspects,
    deaths_to_isolate,
    delivery_allowance,
    isolation_batch,
    isolation_size,
)
from learner.checkpoint import clear_inflight, load_inflight, save_inflight


def test_a_batch_marked_in_training_becomes_the_suspects_one_death_more():
    marker = {"suspects": [], "deaths": 0, "origin": 0, "training": ["1-0", "2-0", "3-0"]}
    s = Suspects.from_marker(marker)
    assert s == Suspects(frozenset({"1-0", "2-0", "3-0"}), deaths=1, origin=3)
    # an isolation batch that died: the smaller set, deaths counted on, origin kept
    died = s.marker(["1-0", "2-0"])
    assert Suspects.from_marker(died) == Suspects(frozenset({"1-0", "2-0"}), 2, 3)
    # a stop between updates: the suspects left, no death added
    left = s.cleared(["1-0"]).marker(None)
    assert left == {"suspects": ["2-0", "3-0"], "deaths": 1, "origin": 3, "training": []}
    assert Suspects.from_marker(left) == Suspects(frozenset({"2-0", "3-0"}), 1, 3)
    assert Suspects.from_marker(None) == Suspects() == Suspects.from_marker({"training": []})


def test_the_culprit_is_the_one_suspect_left_after_two_deaths():
    assert Suspects(frozenset({"9-0"}), deaths=2, origin=16).culprit == "9-0"
    # one death alone convicts nobody (a kill from outside looks the same): retried once
    assert Suspects(frozenset({"9-0"}), deaths=1, origin=1).culprit is None
    assert Suspects(frozenset({"8-0", "9-0"}), deaths=3, origin=16).culprit is None
    assert Suspects(frozenset({"8-0", "9-0"}), 3, 16).cleared(["8-0"]).culprit == "9-0"
    assert Suspects(frozenset({"9-0"}), 3, 16).cleared(["9-0"]) == Suspects()


def test_isolation_batches_take_half_the_suspects_oldest_first():
    s = Suspects(frozenset({"2-0", "4-0", "5-0", "7-0", "9-0"}), 1, 5)
    assert isolation_size(s) == 3
    buffered = ["1-0", "2-0", "3-0", "4-0", "5-0", "7-0", "9-0"]
    assert isolation_batch(s, buffered) == [1, 3, 4]
    assert isolation_batch(s, ["1-0", "9-0"]) == [1]  # the others are gone
    assert isolation_batch(Suspects(frozenset({"2-0"}), 1, 1), buffered) == [1]


@pytest.mark.parametrize("size, want", [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (16, 5), (64, 7)])
def test_deaths_to_isolate_is_ceil_log2_plus_one(size, want):
    assert deaths_to_isolate(size) == want == delivery_allowance(size)


@pytest.mark.parametrize("size", [1, 2, 5, 16, 24])
def test_a_whole_bisection_finds_every_culprit_within_its_death_bound(size):
    """Drive the marker through deaths and trainings as the learner does; every position of
    the culprit is found, every other sample trains exactly once, and the deaths stay within
    `deaths_to_isolate`."""
    batch = [f"{i}-0" for i in range(size)]
    for culprit in batch:
        marker, deaths, trained, released = Suspects().marker(batch), 1, [], []
        while True:
            s = Suspects.from_marker(marker)  # a start after a death (or a stop)
            if s.culprit is not None:
                break
            take = [sorted(s.ids)[i] for i in isolation_batch(s, sorted(s.ids))]
            assert take and len(take) <= isolation_size(s)
            if culprit in take:  # the process dies with the batch marked in training
                marker, deaths = s.marker(take), deaths + 1
                released += sorted(s.ids - set(take))  # no longer suspects: trained as usual
            else:
                trained += take
                marker = s.cleared(take).marker(None)
        assert s.culprit == culprit
        assert sorted(trained + released) == sorted(set(batch) - {culprit})
        # a lone first death is retried once, so a batch of one takes two deaths
        assert deaths <= deaths_to_isolate(size) + (size == 1)


def test_the_marker_is_written_read_and_cleared(tmp_path):
    assert load_inflight(tmp_path) is None
    save_inflight(tmp_path / "ckpt", {"training": ["5-0"], "deaths": 0})
    assert load_inflight(tmp_path / "ckpt") == {"training": ["5-0"], "deaths": 0}
    (tmp_path / "ckpt" / "inflight.json").write_text("{not json")
    assert load_inflight(tmp_path / "ckpt") is None  # unreadable: nothing suspected
    clear_inflight(tmp_path / "ckpt")
    clear_inflight(tmp_path / "ckpt")  # twice is fine
    assert load_inflight(tmp_path / "ckpt") is None
