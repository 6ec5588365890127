"""Prefill planning: which rows are computed and where each sample reads its prompt."""

from __future__ import annotations

import pytest

from actors.engines.prefix_plan import plan_prefill

PROMPTS = [(1, 2, 3), (1, 2), (1, 2, 3, 4), (5,), (1, 2)]
NS = [1, 2, 1, 1, 1]


def test_shared_mode_prefills_only_prompts_not_contained_in_others():
    plan = plan_prefill(PROMPTS, NS, "shared")
    assert plan.rows == [(1, 2, 3, 4), (5,)]
    assert plan.sample_row == [0, 0, 0, 0, 1, 0]
    assert plan.sample_prompt_len == [3, 2, 2, 4, 1, 2]


def test_shared_mode_keeps_diverging_prompts_apart():
    plan = plan_prefill([(1, 2), (1, 3), (1,)], [1, 1, 1], "shared")
    assert plan.rows == [(1, 2), (1, 3)]
    assert plan.sample_row == [0, 1, 0]
    assert plan.sample_prompt_len == [2, 2, 1]


def test_request_mode_prefills_each_request_once():
    plan = plan_prefill(PROMPTS, NS, "request")
    assert plan.rows == PROMPTS
    assert plan.sample_row == [0, 1, 1, 2, 3, 4]
    assert plan.sample_prompt_len == [3, 2, 2, 4, 1, 2]


def test_off_mode_prefills_every_sample():
    plan = plan_prefill(PROMPTS, NS, "off")
    assert plan.rows == [(1, 2, 3), (1, 2), (1, 2), (1, 2, 3, 4), (5,), (1, 2)]
    assert plan.sample_row == [0, 1, 2, 3, 4, 5]


def test_every_sample_reads_its_own_prompt():
    for mode in ("shared", "request", "off"):
        plan = plan_prefill(PROMPTS, NS, mode)
        expected = [p for p, n in zip(PROMPTS, NS, strict=True) for _ in range(n)]
        got = [
            plan.rows[r][:n] for r, n in zip(plan.sample_row, plan.sample_prompt_len, strict=True)
        ]
        assert got == expected


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        plan_prefill(PROMPTS, NS, "sometimes")
