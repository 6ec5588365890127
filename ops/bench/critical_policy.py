"""Critical-step accuracy on a tiny trained policy: parts (b) and (c) of
`gpo bench critical-step` (ops/bench/critical.py has part (a) and the rows)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import time
from dataclasses import replace

import numpy as np

from actors.critical import derive_seed
from actors.engines.base import GenerationRequest, SamplingSettings
from actors.mc_config import McConfig, paper_search
from actors.mc_search import StepTrajectory, find_critical_step
from ops.bench.critical import REFERENCE, Row, format_table, strategies
from ops.harness import PLOTS

PART_B_MODULES = (
    "actors.tasks.arithmetic",
    "ops.tiny_policy.bootstrap",
    "actors.engines.transformers_engine",
)


def part_b_missing() -> list[str]:
    """Modules part (b) needs that are not importable yet."""
    return [m for m in PART_B_MODULES if importlib.util.find_spec(m) is None]


def part_b(args: argparse.Namespace, pivot: bool = False) -> str | None:
    """A tiny base policy on its task (builds it once, cached; minutes): part (b) the
    arithmetic task's, part (c) with `pivot` the pivot task's (`gpo bootstrap --task pivot`).

    One sampled trajectory per held-out prompt; the failed ones whose first wrong step is
    known (`first_wrong_step`) are the cases. The truth is that step (b), or the pivot step
    (c): how often the search lands on the one hard step. Rows: the random-step baseline
    (expected accuracy, mean 1/T) and the MC budgets. Returns None when the modules are
    missing.
    """
    missing = part_b_missing()
    if missing:
        print(f"part (b) skipped: missing {', '.join(missing)}")
        return None
    from actors.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
    from actors.steps import StepConfig, token_spans
    from ops.tiny_policy.bootstrap import BootstrapConfig, bootstrap

    boot = BootstrapConfig(task="pivot") if pivot else BootstrapConfig()
    task = boot.load_task()
    # the pivot policy the pivot studies run on, where it is committed (the bootstrap of
    # another machine is another policy: RESULTS.md 1c)
    pinned = PLOTS / "ablation" / "pivot" / "policies" / boot.cache_key()
    model = pinned if pivot and (pinned / "model.safetensors").is_file() else bootstrap(boot)
    engine = TransformersEngine(TransformersEngineConfig(model=str(model)))
    tok = engine.tokenizer
    dec = functools.partial(tok.decode, skip_special_tokens=True)
    tokens = boot.max_new_tokens if pivot else args.b_max_new_tokens
    sampling = SamplingSettings(temperature=1.0, max_new_tokens=tokens)
    prompts = task.heldout_prompts()[: args.c_prompts if pivot else args.b_prompts]
    # 1. One trajectory per prompt, in one batch.
    reqs = [
        GenerationRequest(tok(p.text)["input_ids"], 1, replace(sampling, seed=i))
        for i, p in enumerate(prompts)
    ]
    results = asyncio.run(engine.generate(reqs))
    cases: list[tuple[StepTrajectory, int]] = []
    for prompt, req, res in zip(prompts, reqs, results, strict=True):
        ids = res.completions[0].token_ids
        text = dec(ids)
        truth = task.first_wrong_step(prompt, text)
        spans = token_spans(ids, tok, StepConfig(), task.split_steps)
        if task.score(prompt, text) > 0 or truth is None or truth >= len(spans):
            continue
        if pivot:
            truth = task.pivot_step(prompt)
            if truth >= len(spans):  # stopped before the pivot
                continue
        logprobs = res.completions[0].logprobs
        cases.append(
            (StepTrajectory(req.prompt_token_ids, ids, spans, 0.0, prompt, logprobs), truth)
        )
    if not cases:
        print("part (b): no failed trajectory with a known first wrong step")
        return None
    head = (
        f"Part ({'c' if pivot else 'b'}): {len(cases)} failed trajectories of {len(prompts)} "
        f"held-out prompts of the {boot.task} task (tiny policy {boot.cache_key()}), mean "
        f"{np.mean([t.num_steps for t, _ in cases]):.1f} steps; truth = "
        + ("the pivot step." if pivot else "the first wrong step.")
    )
    # 2. MC search with each budget; the random baseline is its expectation, 1/T.
    expected = np.asarray([1.0 / t.num_steps for t, _ in cases])
    rows = [Row("random step (expected)", float(expected.mean()), 0.0, 0.0, 0.0, expected)]
    budgets = [(f"uniform K={k}", paper_search(k=k, sampling=sampling)) for k in args.b_ks]
    budgets.append(
        (
            f"uniform K={max(args.b_ks)}, posterior",
            paper_search(k=max(args.b_ks), sampling=sampling, chooser="posterior"),
        )
    )
    budgets.append(("adaptive", paper_search(budget="adaptive", sampling=sampling)))
    # failed trajectories only: every case here failed, so `targets` changes nothing
    budgets += [(n, c) for n, c in strategies(sampling) if c.targets == "all"]
    for name, cfg in budgets:
        began = time.perf_counter()
        rows.append(asyncio.run(_run_b(engine, task, cases, cfg, name, dec)))
        print(f"  {name}: {time.perf_counter() - began:.0f} s", flush=True)  # progress
    asyncio.run(engine.close())
    reference = next((r for r in rows if r.name == REFERENCE), rows[-1])
    text = head + "\n\n" + format_table(rows, reference)
    print(text + "\n")
    return text


async def _run_b(engine, task, cases, config: McConfig, name: str, dec) -> Row:
    correct, rollouts, per_step, rounds, none = [], [], [], [], 0
    for i, (traj, truth) in enumerate(cases):
        cfg = replace(config, seed=derive_seed(7, 0, i))
        res = await find_critical_step(engine, task, traj, cfg, decode=dec)
        none += res.critical_step is None
        correct.append(res.critical_step == truth)
        rollouts.append(res.rollouts)
        per_step.append(res.rollouts / traj.num_steps)
        rounds.append(res.rounds)
    c = np.asarray(correct, dtype=np.float64)
    means = (float(np.mean(x)) for x in (rollouts, per_step, rounds))
    return Row(name, float(c.mean()), *means, c, none / len(cases))
