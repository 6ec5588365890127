"""MC critical-step search (actors/mc_search.py) and its scripted policy (actors/engines/scripted.py)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from actors.critical import derive_seed
from actors.engines.base import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
)
from actors.engines.scripted import (
    BAD,
    BOS,
    EOS,
    GOOD,
    NEWLINE,
    ScriptedEngine,
    ScriptedProblem,
    ScriptedTask,
    decode,
    step_spans,
)
from actors.mc_config import paper_search
from actors.mc_search import (
    CriticalStepResult,
    StepTrajectory,
    find_critical_step,
    find_critical_steps,
    merge_shared,
)
from ops.bench.critical import make_cases, run_budget

# --- a hand-written fake engine: fixed continuations, exact bookkeeping ---------------------


class FakeEngine:
    """Continues any prefix with tokens [100], [101], ... (sample j gets 100 + j)."""

    policy_version = 0

    def __init__(self) -> None:
        self.batches: list[list[GenerationRequest]] = []

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.batches.append(list(requests))
        return [
            GenerationResult([Completion([100 + j], [0.0], "stop") for j in range(r.n)], 0)
            for r in requests
        ]

    async def load_adapter(
        self, version: int, config: dict, safetensors_bytes: bytes | bytearray
    ) -> None:
        pass

    async def close(self) -> None:
        pass


class TableTask:
    """Rewards looked up by the exact completion text it is asked to score."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table
        self.prompts: list[object] = []

    def score(self, prompt: object, completion_text: str) -> float:
        self.prompts.append(prompt)
        return self.table[completion_text]


def fake_decode(ids: Sequence[int]) -> str:
    return ",".join(map(str, ids))


def search(engine, task, traj, config, dec=decode) -> CriticalStepResult:
    return asyncio.run(find_critical_step(engine, task, traj, config, decode=dec))


def test_uniform_search_on_hand_numbers():
    # Prompt [9]; completion 1 2 | 3 | 4 (three steps); reward 0. Continuations of s_0 are
    # scored on "100".."103", of s_1 on "1,2,10x", of s_2 on "1,2,3,10x".
    rewards = {0: [1, 1, 1, 0], 1: [1, 1, 0, 0], 2: [0, 0, 0, 0]}
    kept = {0: [], 1: [1, 2], 2: [1, 2, 3]}
    table = {fake_decode(kept[b] + [100 + j]): r[j] for b, r in rewards.items() for j in range(4)}
    traj = StepTrajectory([9], [1, 2, 3, 4], [(0, 2), (2, 3), (3, 4)], 0.0, prompt="P")
    engine, task = FakeEngine(), TableTask(table)
    res = search(engine, task, traj, paper_search(k=4, seed=3), fake_decode)
    np.testing.assert_allclose(res.values, [0.75, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(res.advantages, [-0.25, -0.5, 0.0])
    assert res.critical_step == 1
    assert (res.rollouts, res.rounds) == (12, 1)
    np.testing.assert_array_equal(res.counts, [4, 4, 4])
    assert [c.token_ids for c in res.critical_completions] == [[100], [101], [102], [103]]
    # ONE generate call: one request per boundary, n = K, prefix = prompt + kept steps.
    assert len(engine.batches) == 1
    batch = engine.batches[0]
    assert [list(r.prompt_token_ids) for r in batch] == [[9], [9, 1, 2], [9, 1, 2, 3]]
    assert [r.n for r in batch] == [4, 4, 4]
    assert len({r.sampling.seed for r in batch}) == 3
    assert task.prompts == ["P"] * 12


def test_no_seed_keeps_the_engines_randomness_and_none_selection_never_resets():
    traj = StepTrajectory([9], [1, 2], [(0, 1), (1, 2)], 1.0, prompt=None)
    table = {fake_decode(p + [100 + j]): 1.0 for p in ([], [1]) for j in range(2)}
    engine = FakeEngine()
    res = search(engine, TableTask(table), traj, paper_search(k=2, seed=None), fake_decode)
    assert all(r.sampling.seed is None for r in engine.batches[0])
    assert res.critical_step is None  # values 1, 1, 1: flat
    res = search(
        FakeEngine(), TableTask(table), traj, paper_search(k=2, selection="none"), fake_decode
    )
    assert res.critical_step is None


def test_batched_search_sends_every_trajectorys_requests_in_one_call():
    # Two trajectories of prompt [9]: a (2 steps) and b (1 step); one uniform call, requests in
    # trajectory order, each trajectory scoring only its own continuations.
    a = StepTrajectory([9], [1, 2], [(0, 1), (1, 2)], 1.0, prompt="A")
    b = StepTrajectory([9], [3], [(0, 1)], 0.0, prompt="B")
    table = {fake_decode(p + [100 + j]): 1.0 for p in ([], [1]) for j in range(2)}
    engine, task = FakeEngine(), TableTask(table)
    configs = [paper_search(k=2, seed=1), paper_search(k=2, seed=2)]
    ra, rb = asyncio.run(find_critical_steps(engine, task, [a, b], configs, decode=fake_decode))
    assert len(engine.batches) == 1
    assert [list(r.prompt_token_ids) for r in engine.batches[0]] == [[9], [9, 1], [9]]
    np.testing.assert_allclose(ra.values, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(rb.values, [1.0, 0.0])
    assert (ra.rounds, rb.rounds, ra.rollouts, rb.rollouts) == (1, 1, 4, 2)
    assert task.prompts == ["A"] * 4 + ["B"] * 2
    assert asyncio.run(find_critical_steps(engine, task, [], [], decode=fake_decode)) == []
    with pytest.raises(ValueError, match="configs"):
        asyncio.run(find_critical_steps(engine, task, [a, b], configs[:1], decode=fake_decode))


def test_shared_states_are_generated_once_and_scored_by_every_search_that_needs_them():
    # a: [9] -> steps [1], [2]; b: [9] -> [1], [5]; c: [9] -> [3] (not sharing). a and b
    # share s_0 = [9] and s_1 = [9, 1]; c asks for [9] too but draws its own.
    a = StepTrajectory([9], [1, 2], [(0, 1), (1, 2)], 1.0, prompt="A")
    b = StepTrajectory([9], [1, 5], [(0, 1), (1, 2)], 0.0, prompt="B")
    c = StepTrajectory([9], [3], [(0, 1)], 0.0, prompt="C")
    table = {fake_decode([1, 100][i:]): 1.0 for i in (0, 1)}
    table |= {fake_decode([1, 101][i:]): 0.0 for i in (0, 1)}
    engine, task = FakeEngine(), TableTask(table)
    share = paper_search(k=2, seed=1, share_states=True)
    configs = [share, replace(share, seed=2), paper_search(k=2, seed=3)]
    ra, rb, rc = asyncio.run(
        find_critical_steps(engine, task, [a, b, c], configs, decode=fake_decode)
    )
    (batch,) = engine.batches
    assert [list(r.prompt_token_ids) for r in batch] == [[9], [9, 1], [9]]
    assert [r.sampling.seed for r in batch][0] == derive_seed(1, 0, 0)  # the first search's
    # values: s_0 from [100] (1) and [101] (0); s_1 = [9, 1] from [1, 100] (1), [1, 101] (0)
    np.testing.assert_allclose(ra.values, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(rb.values, [0.5, 0.5, 0.0])
    np.testing.assert_allclose(rc.values, [0.5, 0.0])
    assert (ra.rollouts, rb.rollouts, rc.rollouts) == (4, 4, 2)
    assert (ra.shared_rollouts, rb.shared_rollouts, rc.shared_rollouts) == (0, 4, 0)
    assert task.prompts == ["A"] * 4 + ["B"] * 4 + ["C"] * 2  # each scores with its prompt
    # without share_states every search draws its own: the searches' results alone
    engine = FakeEngine()
    alone = [replace(cfg, share_states=False) for cfg in configs]
    asyncio.run(find_critical_steps(engine, task, [a, b, c], alone, decode=fake_decode))
    assert len(engine.batches[0]) == 5


def test_merge_shared_keeps_count_and_sampling_apart():
    s = SamplingSettings(seed=1)
    q = [GenerationRequest([9], 2, s), GenerationRequest([9], 3, s)]
    other = [
        GenerationRequest([9], 2, SamplingSettings(seed=7)),  # same state, another seed: shared
        GenerationRequest([9], 2, SamplingSettings(seed=7, temperature=0.5)),  # not the same
        GenerationRequest([9], 3, SamplingSettings(seed=8)),
    ]
    unique, where, first = merge_shared([q, other], [True, True])
    assert unique == [q[0], q[1], other[1]]
    assert where == [0, 1, 0, 2, 1] and first == [True, True, False, True, False]
    unique, where, first = merge_shared([q, other], [True, False])
    assert len(unique) == 5 and where == [0, 1, 2, 3, 4] and all(first)


def test_bad_spans_and_configs_fail_loudly():
    traj = StepTrajectory([9], [1, 2], [(0, 2), (1, 2)], 0.0, prompt=None)
    with pytest.raises(ValueError, match="spans"):
        search(FakeEngine(), TableTask({}), traj, paper_search(), fake_decode)
    with pytest.raises(ValueError):
        paper_search(k=0)
    with pytest.raises(ValueError):
        paper_search(budget="adaptive", selection="random")


# --- the scripted policy ------------------------------------------------------------------


def sample(problem: ScriptedProblem, sampling: SamplingSettings, prefix=None, n=1):
    engine = ScriptedEngine(problem)
    prompt = prefix if prefix is not None else problem.prompt_token_ids
    return asyncio.run(engine.generate([GenerationRequest(prompt, n, sampling)]))[0].completions


def test_scripted_engine_implements_the_interface_and_is_deterministic():
    problem = ScriptedProblem((0.9, 0.5, 0.9), recover=0.1)
    engine = ScriptedEngine(problem)
    assert isinstance(engine, Engine) and engine.policy_version == 0
    a = sample(problem, SamplingSettings(seed=11), n=5)
    b = sample(problem, SamplingSettings(seed=11), n=3)
    assert [c.token_ids for c in a[:3]] == [c.token_ids for c in b]  # sample j from (seed, j)
    assert len({tuple(c.token_ids) for c in a}) > 1
    for c in a:
        assert c.finish_reason == "stop" and c.token_ids[-1] == EOS
        assert len(step_spans(c.token_ids)) == 3 and len(c.logprobs) == len(c.token_ids)
        assert c.text == decode(c.token_ids)


def test_scripted_logprobs_follow_temperature_and_top_p():
    problem = ScriptedProblem((0.8,))
    (c,) = sample(problem, SamplingSettings(seed=0, temperature=0.5))
    verdict = c.token_ids[1]  # step 0 is one filler, the verdict, a newline
    ok = 0.8**2 / (0.8**2 + 0.2**2)  # p^(1/T) renormalised at T = 0.5
    want = math.log(ok) if verdict == GOOD else math.log(1 - ok)
    assert c.logprobs[1] == pytest.approx(want)
    assert c.logprobs[0] == pytest.approx(math.log(1 / 8))  # uniform over 8 fillers
    # top_p 0.5: only `ok` (0.8) survives, and 4 of the 8 equally likely fillers.
    for c in sample(problem, SamplingSettings(seed=1, top_p=0.5), n=20):
        assert c.token_ids[1] == GOOD and c.logprobs[1] == 0.0
        assert c.token_ids[0] in range(5, 9) and c.logprobs[0] == pytest.approx(math.log(1 / 4))


def test_scripted_stops_and_length():
    problem = ScriptedProblem((1.0, 1.0, 1.0))
    (c,) = sample(problem, SamplingSettings(seed=0, max_new_tokens=3))
    assert (len(c.token_ids), c.finish_reason) == (3, "length")
    (c,) = sample(problem, SamplingSettings(seed=0, stop=("ok",)))
    assert c.text.endswith("ok") and c.finish_reason == "stop" and c.text.count("ok") == 1
    (c,) = sample(problem, SamplingSettings(seed=0, stop_token_ids=(NEWLINE,)))
    assert c.token_ids[-1] == NEWLINE and c.token_ids.count(NEWLINE) == 1


def test_scripted_continues_a_prefix_that_ends_inside_a_step():
    problem = ScriptedProblem((1.0, 0.0), recover=0.0)
    # Step 0 done (w0 ok \n); step 1 has its 2 fillers but no verdict yet.
    prefix = [BOS, 5, GOOD, NEWLINE, 5, 6]
    (c,) = sample(problem, SamplingSettings(seed=0), prefix=prefix)
    assert c.token_ids == [BAD, NEWLINE, EOS]


def test_exact_values_by_hand():
    # From a correct state: step 0 stays right w.p. 0.5, step 1 w.p. 1; no recovery.
    problem = ScriptedProblem((0.5, 1.0), recover=0.0)
    ok_ok = [5, GOOD, NEWLINE, 5, 6, GOOD, NEWLINE, EOS]
    no_no = [5, BAD, NEWLINE, 5, 6, BAD, NEWLINE, EOS]
    np.testing.assert_allclose(problem.exact_values(ok_ok), [0.5, 1.0, 1.0])
    np.testing.assert_allclose(problem.exact_values(no_no), [0.5, 0.0, 0.0])
    assert problem.oracle_critical_step(ok_ok) == 0 and problem.pivotal_step == 0
    # With recovery 0.5 at step 1 a wrong state after step 0 is worth 0.5.
    np.testing.assert_allclose(ScriptedProblem((0.5, 1.0), 0.5).exact_values(no_no), [0.75, 0.5, 0])


def test_task_scores_complete_correct_solutions():
    task, problem = ScriptedTask(), ScriptedProblem((0.5, 0.5))
    assert task.score(problem, "w0 ok\nw1 w2 ok\n") == 1.0
    assert task.score(problem, "w0 no\nw1 w2 ok\n") == 1.0  # recovered: the last step counts
    assert task.score(problem, "w0 ok\nw1 w2 no\n") == 0.0
    assert task.score(problem, "w0 ok\nw1 w2 ok") == 0.0  # truncated inside step 1


def test_empirical_values_match_exact_values():
    problem = ScriptedProblem((0.9, 0.4, 0.95, 0.9), recover=0.1)
    for c in sample(problem, SamplingSettings(seed=5), n=3):
        spans = step_spans(c.token_ids)
        traj = StepTrajectory(
            [BOS], c.token_ids, spans, ScriptedTask().score(problem, c.text), problem
        )
        res = search(ScriptedEngine(problem), ScriptedTask(), traj, paper_search(k=400, seed=1))
        np.testing.assert_allclose(res.values, problem.exact_values(c.token_ids), atol=0.08)


# --- finding the known pivotal step -------------------------------------------------------


def scripted_trajectory(problem: ScriptedProblem, verdicts: Sequence[int]) -> StepTrajectory:
    tokens: list[int] = []
    for j, v in enumerate(verdicts):
        tokens += [5] * (1 + j % 3) + [v, NEWLINE]
    tokens.append(EOS)
    reward = ScriptedTask().score(problem, decode(tokens))
    return StepTrajectory([BOS], tokens, step_spans(tokens), reward, problem)


@pytest.mark.parametrize(
    "config", [paper_search(k=16), paper_search(budget="adaptive")], ids=["uniform-k16", "adaptive"]
)
def test_search_finds_the_known_pivotal_step(config):
    # Step 3 is right 35% of the time, the others 98%. A trajectory that fails at step 3 and
    # one that gets through it both turn on step 3; values before it are near 0.35, so MC
    # noise misplaces it now and then: a random step would hit 1/6, an off-by-one never.
    problem = ScriptedProblem((0.98, 0.98, 0.98, 0.35, 0.98, 0.98), recover=0.02)
    fail = scripted_trajectory(problem, [GOOD, GOOD, GOOD, BAD, BAD, BAD])
    win = scripted_trajectory(problem, [GOOD] * 6)
    assert problem.oracle_critical_step(fail.completion_token_ids) == 3 == problem.pivotal_step
    assert problem.oracle_critical_step(win.completion_token_ids) == 3
    hits = {"fail": 0, "win": 0}
    for seed in range(30):
        for name, traj in (("fail", fail), ("win", win)):
            engine = ScriptedEngine(problem)
            res = search(engine, ScriptedTask(), traj, replace(config, seed=seed))
            assert res.rollouts == engine.rollouts
            hits[name] += res.critical_step == 3
    assert min(hits.values()) >= 20, hits  # of 30 each


def test_adaptive_search_on_a_flat_prompt_finds_nothing_within_its_cap():
    problem = ScriptedProblem((0.0, 1.0, 1.0, 1.0), recover=0.0)  # step 0 always fails
    traj = scripted_trajectory(problem, [BAD, BAD, BAD, BAD])  # V = 0 everywhere
    engine = ScriptedEngine(problem)
    res = search(engine, ScriptedTask(), traj, paper_search(budget="adaptive", seed=0))
    assert res.critical_step is None
    assert res.rollouts <= 4.5 * 4 and engine.calls == res.rounds
    assert res.step_probabilities[-1] == res.step_probabilities.max()


def test_adaptive_rounds_use_fresh_seeds_and_respect_the_cap():
    problem = ScriptedProblem((0.9, 0.9, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9), recover=0.05)
    traj = scripted_trajectory(problem, [GOOD, GOOD, BAD] + [BAD] * 5)
    engine = ScriptedEngine(problem)
    seeds: list[tuple[int, int]] = []
    real_generate = engine.generate

    async def spy(requests):
        seeds.extend((list(r.prompt_token_ids).count(NEWLINE), r.sampling.seed) for r in requests)
        return await real_generate(requests)

    engine.generate = spy
    cfg = paper_search(budget="adaptive", seed=4, adaptive_budget=3.0, adaptive_max_rounds=5)
    res = search(engine, ScriptedTask(), traj, cfg)
    assert 1 < res.rounds <= 5 and res.rollouts <= 24
    assert len(set(seeds)) == len(seeds)  # no (boundary, seed) repeats across rounds
    assert res.step_probabilities.shape == (9,)
    assert res.step_probabilities.sum() == pytest.approx(1.0)


def test_adaptive_matches_uniform_k8_with_at_most_60_percent_of_the_rollouts():
    # The benchmark's protocol on a fixed seeded set (python -m ops.bench.critical runs more).
    cases = make_cases(seed=100, count=200, min_margin=0.1) + make_cases(101, 200, 0.1)
    uniform = run_budget(cases, paper_search(k=8), "K=8")
    adaptive = run_budget(cases, paper_search(budget="adaptive"), "adaptive")
    assert adaptive.rollouts <= 0.6 * uniform.rollouts
    assert adaptive.accuracy >= uniform.accuracy - 0.02
    # And the measurement can tell budgets apart: K = 2 is far worse than K = 8.
    k2 = run_budget(cases[:200], replace(paper_search(), k=2), "K=2")
    assert k2.accuracy < uniform.accuracy - 0.15


def test_k8_finds_pronounced_pivots_and_the_posterior_chooser_helps():
    # Pivots whose exact |A| leads the runner-up by 0.5 or more: K = 8 finds them at least
    # 90% of the time with the change-point posterior choosing, and the posterior does not
    # lose to the paper's argmax on the same continuations (common random numbers).
    cases = make_cases(seed=200, count=150, min_margin=0.5) + make_cases(201, 150, 0.5)
    argmax = run_budget(cases, paper_search(k=8), "K=8")
    posterior = run_budget(cases, paper_search(k=8, chooser="posterior"), "K=8 posterior")
    assert (
        posterior.rollouts
        == argmax.rollouts
        == pytest.approx(8 * np.mean([c.trajectory.num_steps for c in cases]))
    )
    assert posterior.accuracy >= 0.9, posterior.accuracy
    assert posterior.accuracy >= argmax.accuracy


def test_posterior_chooser_needs_advantage_selection():
    with pytest.raises(ValueError, match="posterior"):
        paper_search(chooser="posterior", selection="random")
    with pytest.raises(ValueError, match="chooser"):
        paper_search(chooser="median")


# --- batched searches equal searches alone ------------------------------------------------


def rollouts_of(problem: ScriptedProblem, count: int, seed: int) -> list[StepTrajectory]:
    """`count` trajectories sampled by the scripted policy from the bare prompt."""
    out = []
    for c in sample(problem, SamplingSettings(seed=seed), n=count):
        reward = ScriptedTask().score(problem, c.text)
        out.append(StepTrajectory([BOS], c.token_ids, step_spans(c.token_ids), reward, problem))
    return out


def assert_same_result(a: CriticalStepResult, b: CriticalStepResult) -> None:
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.advantages, b.advantages)
    assert a.critical_step == b.critical_step
    assert (a.rollouts, a.rounds, a.rewards) == (b.rollouts, b.rounds, b.rewards)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.critical_completions == b.critical_completions
    if a.step_probabilities is None:
        assert b.step_probabilities is None
    else:
        np.testing.assert_array_equal(a.step_probabilities, b.step_probabilities)


BATCHED = {
    "uniform": [paper_search(k=4)],
    "uniform-random": [paper_search(k=3, selection="random")],
    "uniform-posterior": [paper_search(k=4, chooser="posterior")],
    "adaptive": [paper_search(budget="adaptive")],
    "mixed": [
        paper_search(k=4),
        paper_search(budget="adaptive"),
        paper_search(k=2, selection="random"),
    ],
}


@pytest.mark.parametrize("bases", BATCHED.values(), ids=BATCHED.keys())
def test_batched_searches_equal_each_search_alone(bases):
    # A prompt's rollouts share s_0 and often more; each has its own seed, as the estimator
    # seeds them. The scripted engine samples from (seed, index, prefix) only, so batching
    # must change no value, advantage, chosen step or continuation.
    problem = ScriptedProblem((0.95, 0.9, 0.45, 0.9, 0.95, 0.9), recover=0.05)
    trajectories = rollouts_of(problem, 8, seed=2)
    configs = [replace(bases[j % len(bases)], seed=100 + j) for j in range(len(trajectories))]
    alone = [
        search(ScriptedEngine(problem), ScriptedTask(), t, c)
        for t, c in zip(trajectories, configs, strict=True)
    ]
    engine = ScriptedEngine(problem)
    together = asyncio.run(
        find_critical_steps(engine, ScriptedTask(), trajectories, configs, decode=decode)
    )
    for a, b in zip(alone, together, strict=True):
        assert_same_result(a, b)
    assert engine.rollouts == sum(r.rollouts for r in alone)
    # one generate call per round of the longest search, not one per search and round
    assert engine.calls == max(r.rounds for r in alone)
    if any(c.budget == "adaptive" for c in configs):
        assert engine.calls < sum(r.rounds for r in alone)
    else:
        assert engine.calls == 1


# --- cheaper searches: bisection, screening, targets (issue: the search at a fraction) -----


def hand_trajectory(t: int) -> StepTrajectory:
    """Prompt [9]; t one-token steps 1..t; reward 0."""
    return StepTrajectory([9], list(range(1, t + 1)), [(i, i + 1) for i in range(t)], 0.0, "P")


def value_table(values: Sequence[float], t: int, k: int) -> dict[str, float]:
    """Rewards by continuation text: the K continuations from s_b score round(V_b * K) ones."""
    table = {}
    for b in range(t):
        ones = round(values[b] * k)
        for j in range(k):
            table[fake_decode(list(range(1, b + 1)) + [100 + j])] = float(j < ones)
    return table


def test_bisection_probes_midpoints_and_finds_a_single_drop_by_hand():
    # V = 1 up to s_5, then 0 (the drop is step 5 of 8): probes s_0 and s_4 (round 1),
    # s_6 (V(s_4) - V(s_8) is the larger half), s_5 -> stretch (5, 6): step 5
    values = [1, 1, 1, 1, 1, 1, 0, 0]
    engine = FakeEngine()
    res = search(
        engine,
        TableTask(value_table(values, 8, 4)),
        hand_trajectory(8),
        paper_search(k=4, seed=0, budget="bisect"),
        fake_decode,
    )
    probed = [[len(r.prompt_token_ids) - 1 for r in batch] for batch in engine.batches]
    assert probed == [[0, 4], [6], [5]]
    assert res.critical_step == 5 and res.rounds == 3
    assert res.rollouts == 4 * (1 + math.ceil(math.log2(8))) == 16
    np.testing.assert_array_equal(res.counts, [4, 0, 0, 0, 4, 4, 4, 0])
    # unprobed boundaries carry the value before them: the drop lands on step 5 alone
    np.testing.assert_allclose(res.values, [1, 1, 1, 1, 1, 1, 0, 0, 0])
    assert len(res.critical_completions) == 4  # from s_5, reusable as reset rollouts


def test_bisection_on_one_step_and_on_flat_values():
    res = search(
        FakeEngine(),
        TableTask(value_table([1.0], 1, 2)),
        hand_trajectory(1),
        paper_search(k=2, seed=0, budget="bisect"),
        fake_decode,
    )
    assert res.critical_step == 0 and res.rollouts == 2 and res.rounds == 1
    flat = search(
        FakeEngine(),
        TableTask(value_table([0.0] * 5, 5, 2)),
        hand_trajectory(5),
        paper_search(k=2, seed=0, budget="bisect"),
        fake_decode,
    )
    assert flat.critical_step is None  # all-wrong: nothing to reset to


def test_bisection_finds_the_scripted_pivot_about_as_often_as_uniform_at_half_the_cost():
    # one drop (step 3 of 8): a random step would hit 1/8 of the time, about 4 of 30
    problem = ScriptedProblem((0.98, 0.98, 0.98, 0.35, 0.98, 0.98, 0.98, 0.98), recover=0.02)
    fail = scripted_trajectory(problem, [GOOD, GOOD, GOOD, BAD, BAD, BAD, BAD, BAD])
    hits, cost = {"bisect": 0, "uniform": 0}, {"bisect": 0, "uniform": 0}
    for seed in range(30):
        for name, config in (
            ("bisect", paper_search(k=16, budget="bisect")),
            ("uniform", paper_search(k=16)),
        ):
            res = search(ScriptedEngine(problem), ScriptedTask(), fail, replace(config, seed=seed))
            hits[name] += res.critical_step == 3
            cost[name] += res.rollouts
    assert cost["bisect"] * 2 == cost["uniform"]  # 16 x 4 probes against 16 x 8
    assert hits["bisect"] >= hits["uniform"] - 3 and hits["bisect"] >= 15, hits


def test_screening_estimates_the_uncertain_steps_only():
    # 6 steps; the behaviour policy was least sure at steps 4 and 1 (cap 2): probes s_0 and
    # the ends of steps 1 and 4 (s_1, s_2, s_4, s_5); the argmax is taken among steps 1, 4
    values = [1.0, 1.0, 0.5, 0.5, 0.5, 0.0]
    traj = replace(hand_trajectory(6), logprobs=[-0.1, -2.0, -0.2, -0.3, -3.0, -0.1])
    engine = FakeEngine()
    res = search(
        engine,
        TableTask(value_table(values, 6, 2)),
        traj,
        paper_search(k=2, seed=0, screen="logprob", screen_cap=2),
        fake_decode,
    )
    assert [len(r.prompt_token_ids) - 1 for r in engine.batches[0]] == [0, 1, 2, 4, 5]
    assert len(engine.batches) == 1 and res.rollouts == 10
    np.testing.assert_allclose(res.values, [1.0, 1.0, 0.5, 0.5, 0.5, 0.0, 0.0])
    assert res.critical_step == 1  # |A_1| = |A_4| = 0.5: the earlier
    with pytest.raises(ValueError):  # screening needs the behaviour logprobs
        search(FakeEngine(), TableTask({}), hand_trajectory(3), paper_search(screen="logprob"))
    with pytest.raises(ValueError):
        paper_search(screen="logprob", budget="adaptive")


def test_search_targets():
    from actors.critical import screen_steps, searched

    assert searched(0.0, "failed", 0.25, 0.9) and not searched(1.0, "failed", 0.25, 0.1)
    assert searched(1.0, "all", 0.0, 0.9)
    assert searched(1.0, "failed_sampled", 0.25, 0.2)
    assert not searched(1.0, "failed_sampled", 0.25, 0.3)
    assert searched(0.5, "failed_sampled", 0.0, 0.9)  # partial reward counts as a failure
    with pytest.raises(ValueError):
        searched(1.0, "some", 0.5, 0.1)
    assert screen_steps([-0.1, -2.0, -0.2, -2.0], 2) == [1, 3]
    assert screen_steps([-1.0, -1.0, -1.0], 2) == [0, 1]  # ties: the earlier steps


def test_search_counts_the_tokens_it_generated():
    # FakeEngine continues with one token per continuation: K x T tokens, none when shared
    traj = hand_trajectory(3)
    res = search(
        FakeEngine(),
        TableTask(value_table([1, 1, 0], 3, 2)),
        traj,
        paper_search(k=2, seed=0),
        fake_decode,
    )
    assert res.tokens == 2 * 3 == res.rollouts
