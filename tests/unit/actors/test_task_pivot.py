"""The `pivot` task: one hard step in a chain of easy ones, every step checkable."""

from __future__ import annotations

import random
import re

import pytest

from actors.tasks import load_task, steps_of
from actors.tasks.arithmetic import ALPHABET as ARITHMETIC
from actors.tasks.base import TaskPrompt
from actors.tasks.pivot import ALPHABET, Pivot, answer, pivot_index, solution, step_accuracy


def test_solution_by_hand_and_the_pivot_is_times_mod_100():
    text = "Q: 23+4-2*7+1-3\n"
    assert solution(text) == "23+4=27\n27-2=25\n25*7=75\n75+1=76\n76-3=73\nA: 73"
    assert answer("Q: 45+3*13-1\n") == "23"  # 48 * 13 = 624 -> 24, then 24 - 1 = 23
    assert pivot_index(text) == 2


def test_easy_steps_never_carry_and_the_knobs_hold():
    for digits in (1, 2):
        for position in ("early", "middle", "late", "random"):
            task = Pivot(
                min_steps=8,
                max_steps=16,
                pivot_digits=digits,
                pivot_position=position,
                n_train=300,
                n_heldout=50,
            )
            for p in task.train_prompts() + task.heldout_prompts():
                assert set(p.text) <= set(ALPHABET) == set(ARITHMETIC) | {"*"}
                lines = solution(p.text).split("\n")[:-1]
                assert 8 <= len(lines) <= 16
                n, k = len(lines), task.pivot_step(p)
                assert sum("*" in line for line in lines) == 1 and "*" in lines[k]
                if position != "random":
                    third = {"early": 0, "middle": 1, "late": 2}[position]
                    assert [(0, n // 3), (n // 3, 2 * n // 3), (2 * n // 3, n)][third][0] <= k
                    assert k < [(0, n // 3), (n // 3, 2 * n // 3), (2 * n // 3, n)][third][1]
                factor = int(lines[k].split("*")[1].split("=")[0])
                assert (2 <= factor <= 9) if digits == 1 else (11 <= factor <= 99 and factor % 10)
                for j, line in enumerate(lines):
                    if j == k:
                        continue
                    left, right = (int(x) for x in re.split(r"[+-]\d+=", line))
                    assert 0 <= right <= 99 and left // 10 == right // 10  # the units only
                    assert 1 <= abs(right - left) <= 9


def test_deterministic_disjoint_and_loadable_by_name():
    a = load_task("pivot", n_train=200, n_heldout=40, seed=3)
    b = Pivot(n_train=200, n_heldout=40, seed=3)
    assert a.train_prompts() == b.train_prompts() and a.heldout_prompts() == b.heldout_prompts()
    train = {p.text for p in a.train_prompts()}
    assert len(train) == 200 and not train & {p.text for p in a.heldout_prompts()}
    assert Pivot(n_train=200, n_heldout=40, seed=4).train_prompts() != a.train_prompts()
    for bad in (
        {"min_steps": 1},
        {"min_steps": 9, "max_steps": 8},
        {"pivot_digits": 3},
        {"pivot_position": "first"},
    ):
        with pytest.raises(ValueError):
            Pivot(**bad)


def test_score_and_first_wrong_step():
    task = Pivot()
    p = TaskPrompt("x", "Q: 23+4-2*7+1-3\n", "73")
    right = solution(p.text)
    assert task.score(p, right) == 1.0 and task.first_wrong_step(p, right) is None
    slip = right.replace("25*7=75", "25*7=35").replace("75+1=76", "35+1=36")
    assert task.first_wrong_step(p, slip) == 2 == task.pivot_step(p)
    assert task.score(p, slip.replace("A: 73", "A: 33")) == 0.0
    assert task.first_wrong_step(p, "23+4=27\n27-2=24\n") == 1  # an easy step
    assert task.first_wrong_step(p, "23+4=27\n27-2=25\n") == 1  # stops early: its last step
    assert len(steps_of(task, right)) == 6  # one step per line, the answer line included


def test_step_accuracy_counts_reached_steps_only():
    task = Pivot()
    p = TaskPrompt("x", "Q: 23+4-2*7+1-3\n", "73")
    right = solution(p.text)
    wrong_pivot = right.replace("25*7=75", "25*7=35")
    wrong_easy = "23+4=28\n28-2=26\n"
    got = step_accuracy(task, [p, p, p], [right, wrong_pivot, wrong_easy])
    # right: 4 easy + pivot right; wrong pivot: 2 easy right, pivot wrong; wrong easy: step 0
    assert (got["easy_right"], got["easy_total"]) == (4 + 2 + 0, 4 + 2 + 1)
    assert (got["pivot_right"], got["pivot_total"]) == (1, 2)
    assert got["pivot_rate"] == 0.5


def test_every_sampled_chain_stays_in_range():
    rng = random.Random(0)
    task = Pivot(min_steps=16, max_steps=16, pivot_digits=2)
    for _ in range(500):
        text = task.sample_problem(rng)
        values = [int(line.split("=")[1]) for line in solution(text).split("\n")[:-1]]
        assert all(0 <= v <= 99 for v in values)
