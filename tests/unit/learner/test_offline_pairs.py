"""Offline pairs on the scripted policy: branch at s_m, chosen scores 1, rejected 0."""

import asyncio

from actors.engines.base import SamplingSettings
from actors.engines.scripted import (
    BOS,
    ScriptedEngine,
    ScriptedProblem,
    ScriptedTask,
    decode,
    step_spans,
)
from actors.mc_config import McConfig
from learner.offline.pairs import (
    PairConfig,
    critical_step_pairs,
    read_pairs,
    whole_trajectory_pairs,
    write_pairs,
)

PROBLEM = ScriptedProblem((0.97, 0.95, 0.4, 0.97, 0.95), recover=0.05)
CONFIG = PairConfig(samples=8, branch_n=4, branch_rounds=4, mc=McConfig(k=8), seed=3)


def test_critical_pairs_branch_at_the_critical_step(tmp_path):
    engine, task = ScriptedEngine(PROBLEM), ScriptedTask()
    pairs = asyncio.run(
        critical_step_pairs(
            engine, task, PROBLEM, [BOS], "p0", CONFIG, decode=decode, split=step_spans
        )
    )
    assert pairs, "the scripted policy has a pivotal step: some pairs must exist"
    for p in pairs:
        # The prompt is the trajectory before step m: exactly m finished steps.
        assert p.prompt.count("\n") == p.critical_step
        assert len(p.step_values) == PROBLEM.num_steps + 1
        assert p.prefix_len == sum(len(line.split()) + 1 for line in p.prompt.split("\n")[:-1])
        assert task.score(PROBLEM, p.prompt + p.chosen) == 1.0
        assert task.score(PROBLEM, p.prompt + p.rejected) == 0.0
    # Most pairs branch at the designed pivotal step.
    at_pivot = sum(p.critical_step == PROBLEM.pivotal_step for p in pairs)
    assert at_pivot >= len(pairs) / 2
    path = tmp_path / "pairs.jsonl"
    assert write_pairs(path, pairs) == len(pairs)
    rows = read_pairs(path)
    assert rows[0]["prompt"] == pairs[0].prompt and rows[0]["critical_step"] is not None


def test_whole_trajectory_pairs_share_only_the_prompt():
    engine, task = ScriptedEngine(PROBLEM), ScriptedTask()
    (p,) = asyncio.run(
        whole_trajectory_pairs(engine, task, PROBLEM, [BOS], "p0", CONFIG, decode=decode)
    )
    assert p.prompt == "" and p.critical_step is None and p.prefix_len == 0
    assert task.score(PROBLEM, p.chosen) == 1.0 and task.score(PROBLEM, p.rejected) == 0.0


def test_no_pair_when_every_continuation_wins():
    always = ScriptedProblem((1.0, 1.0, 1.0))
    engine = ScriptedEngine(always)
    config = PairConfig(samples=2, branch_rounds=1, sampling=SamplingSettings(), seed=0)
    pairs = asyncio.run(
        whole_trajectory_pairs(engine, ScriptedTask(), always, [BOS], "p", config, decode=decode)
    )
    assert pairs == [] and engine.calls == 2
