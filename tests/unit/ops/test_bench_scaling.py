"""ops/bench/scaling.py: speed-up, efficiency and the flattening point by hand."""

from __future__ import annotations

import pytest

from ops.bench.scaling_report import Trial, flattens_at, format_table, marginal, summarise


def trial(actors: int, repeat: int, trajectories: int) -> Trial:
    return Trial(
        actors, repeat, 10.0, trajectories, 30 * trajectories, startup=5.0, cpu_seconds=5.0 * actors
    )


def test_speedup_is_the_median_of_paired_ratios():
    trials = [
        trial(1, 0, 100),
        trial(2, 0, 180),
        trial(4, 0, 200),  # ratios 1.8, 2.0
        trial(1, 1, 50),
        trial(2, 1, 100),
        trial(4, 1, 110),  # 2.0, 2.2 (a slow repeat)
        trial(1, 2, 100),
        trial(2, 2, 150),
        trial(4, 2, 160),  # 1.5, 1.6
    ]
    one, two, four = summarise(trials, [1, 2, 4])
    assert one.speedup == 1.0 and one.efficiency == 1.0
    assert one.trajectories_per_s == 10.0 and one.tokens_per_s == 300.0  # median of 10, 5, 10
    assert two.speedup == pytest.approx(1.8) and two.efficiency == pytest.approx(0.9)
    assert four.speedup == pytest.approx(2.0) and four.efficiency == pytest.approx(0.5)
    assert four.per_repeat == [20.0, 11.0, 16.0]
    assert four.cores == 2.0 and one.cores == 0.5  # 5 CPU s per actor in 10 s windows
    assert one.per_cpu_second == 20.0 and four.per_cpu_second == 8.0  # median of 10, 5.5, 8
    assert marginal(one, two) == pytest.approx(0.8)  # paired speed-ups 1 -> 1.8
    assert marginal(two, four) == pytest.approx(2.0 / 1.8 - 1)  # 1.8 -> 2.0, twice the actors
    assert flattens_at([one, two, four]) == 2
    assert "| 4 | 16.0 | 480 | 2.00x | 50% | 20.0, 11.0, 16.0 | 2.00 | 8.0 |" in format_table(
        [one, two, four]
    )


def test_flattening_is_where_added_actors_return_less_than_half_their_share():
    rows = summarise([trial(1, 0, 100), trial(2, 0, 160), trial(4, 0, 250)], [1, 2, 4])
    assert [marginal(a, b) for a, b in zip(rows, rows[1:])] == pytest.approx([0.6, 0.5625])
    assert flattens_at(rows) is None
    assert flattens_at(rows, floor=0.58) == 2
