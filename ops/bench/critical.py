"""Benchmark: critical-step accuracy against MC cost (`python -m ops.bench.critical`).

Part (a), always: scripted policies (`actors.engines.scripted`) with a known pivotal step. Each case
is a random problem and one trajectory sampled from it; its ground truth is the exact argmax
|A| (`oracle_critical_step`), kept only when it beats the runner-up by `--min-margin` so that
the "right" step is well defined. Every budget runs on the same cases with the same seeds
(common random numbers: K = 4 sees the first 4 of K = 8's continuations), so differences
between rows are paired. Reported: accuracy (chosen step == truth), rollouts per trajectory,
and both against uniform K = 4 (the default, which cheaper searches are held to). Besides
the budgets of the paper (uniform K, argmax) and the adaptive one, the cheaper strategies
of `[estimator.mc]`: bisection (`budget = "bisect"`), screening by behaviour logprob
(`screen = "logprob"`), and searching failed trajectories only (`targets = "failed"`: a
successful trajectory gets no search, no step, no cost).

Part (b), only when the modules exist: the tiny base policy on the synthetic arithmetic task
(`ops.tiny_policy.bootstrap`, built once and cached, minutes on a CPU) in the transformers engine; on
its failed trajectories, the chosen step against the ground-truth first wrong step and a
random-step baseline. `--skip-b` leaves it out. Part (c), with `--pivot`: the same on the
pivot task's policy, the truth being the pivot step (how often the search finds the one
hard step of the chain).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from actors.critical import choose_critical_step, derive_seed, searched
from actors.engines.base import GenerationRequest, SamplingSettings
from actors.engines.scripted import (
    ScriptedEngine,
    ScriptedProblem,
    ScriptedTask,
    decode,
    step_spans,
)
from actors.mc_config import McConfig, paper_search
from actors.mc_search import StepTrajectory, find_critical_step
from ops.harness import machine_line, parser, write_section


@dataclass(frozen=True, slots=True)
class Case:
    """One benchmark trajectory with its ground truth."""

    problem: ScriptedProblem
    trajectory: StepTrajectory
    truth: int
    """The exact critical step (oracle argmax |A|)."""
    seed: int
    """Base seed for this case's MC search."""


@dataclass(frozen=True, slots=True)
class Row:
    """Results of one budget over all cases."""

    name: str
    accuracy: float
    """Fraction of cases whose chosen step is the truth."""
    rollouts: float
    """Mean continuations per trajectory."""
    per_step: float
    """Mean continuations per step boundary."""
    rounds: float
    """Mean `generate` calls per trajectory."""
    correct: np.ndarray
    """Per-case 0/1, shape (cases,), for paired comparisons."""
    no_step: float = 0.0
    """Fraction of cases where the search chose no step (flat values)."""


FAMILIES = {
    # one pronounced pivot: easy steps almost never fail, the pivotal one usually does
    "clear": dict(easy=(0.97, 1.0), hard=(0.3, 0.7), recover=(0.0, 0.02)),
    # the pivot competes with noisier easy steps and self-correction
    "hard": dict(),
}


def make_cases(
    seed: int, count: int, min_margin: float, family: str = "hard", steps: tuple[int, int] = (4, 12)
) -> list[Case]:
    """`count` cases from `seed`: random problems of `family`, one sampled trajectory each,
    truth margin >= min_margin (problems failing it are redrawn)."""
    rng = np.random.default_rng(seed)
    task, cases, tries = ScriptedTask(), [], 0
    while len(cases) < count:
        tries += 1
        problem = ScriptedProblem.random(rng, steps=steps, **FAMILIES[family])
        engine = ScriptedEngine(problem)
        req = GenerationRequest(problem.prompt_token_ids, 1, SamplingSettings(seed=tries))
        completion = asyncio.run(engine.generate([req]))[0].completions[0]
        tokens = completion.token_ids
        if problem.oracle_margin(tokens) < min_margin:
            continue
        traj = StepTrajectory(
            prompt_token_ids=problem.prompt_token_ids,
            completion_token_ids=tokens,
            step_spans=step_spans(tokens),
            reward=task.score(problem, decode(tokens)),
            prompt=problem,
            logprobs=completion.logprobs,
        )
        truth = problem.oracle_critical_step(tokens)
        assert truth is not None  # a positive margin means a nonzero largest |A|
        cases.append(Case(problem, traj, truth, derive_seed(seed, 1_000_000, len(cases))))
    return cases


def is_searched(trajectory: StepTrajectory, config: McConfig) -> bool:
    """`config.targets` for one trajectory, its sampled-success draw from the config's seed."""
    draw = np.random.default_rng(config.seed).random()
    return searched(trajectory.reward, config.targets, config.success_share, draw)


async def _run_async(cases: Sequence[Case], config: McConfig, name: str) -> Row:
    task = ScriptedTask()
    correct, rollouts, per_step, rounds, none = [], [], [], [], 0
    for case in cases:
        cfg = replace(config, seed=case.seed)
        if not is_searched(case.trajectory, cfg):  # no search: no step, no cost
            none += 1
            correct.append(False)
            rollouts.append(0)
            per_step.append(0.0)
            rounds.append(0)
            continue
        engine = ScriptedEngine(case.problem)
        res = await find_critical_step(engine, task, case.trajectory, cfg, decode=decode)
        assert res.rollouts == engine.rollouts
        none += res.critical_step is None
        correct.append(res.critical_step == case.truth)
        rollouts.append(res.rollouts)
        per_step.append(res.rollouts / case.trajectory.num_steps)
        rounds.append(res.rounds)
    c = np.asarray(correct, dtype=np.float64)
    means = (float(np.mean(x)) for x in (rollouts, per_step, rounds))
    return Row(name, float(c.mean()), *means, c, none / len(cases))


def run_budget(cases: Sequence[Case], config: McConfig, name: str) -> Row:
    """Run `find_critical_step` with `config` (seeded per case) over every case."""
    return asyncio.run(_run_async(cases, config, name))


def random_row(cases: Sequence[Case]) -> Row:
    """The Satori-style baseline: a uniform step, no MC."""
    rng = np.random.default_rng(0)
    c = np.asarray(
        [
            choose_critical_step(np.ones(x.trajectory.num_steps), "random", rng) == x.truth
            for x in cases
        ],
        dtype=np.float64,
    )
    return Row("random step", float(c.mean()), 0.0, 0.0, 0.0, c)


REFERENCE = "uniform K=4"
"""The row every other is compared with (paired): the uniform budget at the default K."""


def format_table(rows: Sequence[Row], reference: Row, failed: np.ndarray | None = None) -> str:
    """Markdown table; `reference` (uniform K = 4, today's default and the rule cheaper
    searches are held to) gives the ratio and difference columns.

    The +- column is the standard error of the paired accuracy difference to the reference.
    `failed` (per-case bool): adds the accuracy over the failed trajectories alone, where a
    search of failures only (`targets`) loses nothing.
    """
    cols = ["budget", "accuracy %", "vs K=4 (points)", "+-"]
    cols += ["on failed %"] if failed is not None else []
    cols += ["rollouts/traj", "rollouts/step", "rollouts vs K=4", "generate calls", "no step %"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        diff = r.correct - reference.correct
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
        on_failed = (
            [f"{100 * r.correct[failed].mean():.1f}" if failed.any() else "-"]
            if failed is not None
            else []
        )
        cells = [
            r.name,
            f"{100 * r.accuracy:.1f}",
            f"{100 * (r.accuracy - reference.accuracy):+.1f}",
        ]
        cells += [f"{100 * se:.1f}", *on_failed, f"{r.rollouts:.1f}", f"{r.per_step:.2f}"]
        cells += [f"{r.rollouts / reference.rollouts:.2f}", f"{r.rounds:.2f}"]
        cells += [f"{100 * r.no_step:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


MARGIN_BINS = ((0.1, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.01))
"""Truth-margin bins: how far the critical step's exact |A| leads the runner-up's."""


def margin_table(cases: Sequence[Case], rows: Sequence[Row]) -> str:
    """Accuracy % of each row by truth margin: where MC noise stops mattering."""
    margins = np.asarray(
        [c.problem.oracle_margin(c.trajectory.completion_token_ids) for c in cases]
    )
    masks = [(margins >= lo) & (margins < hi) for lo, hi in MARGIN_BINS]
    masks.append(margins >= 0.5)
    head = [f"[{lo:.1f}, {min(hi, 1.0):.1f}{']' if hi > 1 else ')'}" for lo, hi in MARGIN_BINS]
    head.append(">= 0.5")
    lines = [
        "| budget | " + " | ".join(f"margin {h}" for h in head) + " |",
        "|---|" + "---|" * len(head),
        "| cases | " + " | ".join(str(int(m.sum())) for m in masks) + " |",
    ]
    for r in rows:
        cells = [f"{100 * r.correct[m].mean():.1f}" if m.any() else "-" for m in masks]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def part_a(args: argparse.Namespace, family: str) -> str:
    """Scripted policies of `family`: uniform K in `args.ks` (the paper's argmax), uniform
    K = 4 and 8 with the posterior chooser, and the adaptive budget, on the same cases.
    Returns the markdown it printed."""
    cases = [
        c
        for s in args.seeds
        for c in make_cases(s, args.instances, args.min_margin, family, tuple(args.steps))
    ]
    steps = np.mean([c.trajectory.num_steps for c in cases])
    at_pivot = np.mean([c.truth == c.problem.pivotal_step for c in cases])
    head = (
        f"Part (a), family `{family}`: {len(cases)} scripted trajectories (seeds {args.seeds}, "
        f"{args.instances} each, truth margin >= {args.min_margin}), mean {steps:.1f} steps; "
        f"the truth is the designed pivotal step in {100 * at_pivot:.0f}%."
    )
    rows = [random_row(cases)]
    for k in args.ks:
        rows.append(run_budget(cases, paper_search(k=k), f"uniform K={k}"))
    for k in (4, 8):
        rows.append(
            run_budget(cases, paper_search(k=k, chooser="posterior"), f"uniform K={k}, posterior")
        )
    adaptive = paper_search(budget="adaptive", adaptive_budget=args.adaptive_budget)
    rows.append(run_budget(cases, adaptive, f"adaptive (cap {args.adaptive_budget}/step)"))
    for name, config in strategies():
        rows.append(run_budget(cases, config, name))
    reference = next((r for r in rows if r.name == REFERENCE), rows[-1])
    text = "\n\n".join(
        [
            head,
            format_table(
                rows, reference, np.asarray([c.trajectory.reward < 1.0 for c in cases], bool)
            ),
            "Accuracy % by truth margin (the exact |A| of the critical step minus the runner-up's):",
            margin_table(cases, [r for r in rows if r.name != "random step"]),
        ]
    )
    print(text + "\n")
    return text


def strategies(sampling: SamplingSettings | None = None) -> list[tuple[str, McConfig]]:
    """The cheaper searches and their combinations, as rows: bisection, screening, failed
    trajectories only (GPO.md, "Where this project should go beyond the paper")."""
    base = paper_search() if sampling is None else paper_search(sampling=sampling)
    out = []
    for k in (4, 8):
        out.append((f"bisect K={k}", replace(base, k=k, budget="bisect")))
    for cap in (2, 4):
        out.append(
            (f"screen logprob cap {cap}, K=4", replace(base, screen="logprob", screen_cap=cap))
        )
    out.append(("failed only, uniform K=4", replace(base, targets="failed")))
    out.append(("failed only, bisect K=4", replace(base, targets="failed", budget="bisect")))
    out.append(
        (
            "failed + 25% of successes, bisect K=4",
            replace(base, targets="failed_sampled", budget="bisect"),
        )
    )
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser("gpo bench critical-step", __doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="case seeds")
    p.add_argument("--instances", type=int, default=400, help="cases per seed")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8, 12], help="uniform K values")
    p.add_argument("--min-margin", type=float, default=0.1, help="truth |A| lead over runner-up")
    p.add_argument(
        "--steps",
        type=int,
        nargs=2,
        default=[4, 12],
        metavar=("MIN", "MAX"),
        help="number of steps per scripted problem, uniform in [MIN, MAX]",
    )
    p.add_argument(
        "--families",
        nargs="+",
        choices=sorted(FAMILIES),
        default=["clear", "hard"],
        help="scripted problems: `clear` (one pronounced pivot) and/or `hard` (noisier steps)",
    )
    p.add_argument(
        "--adaptive-budget",
        type=float,
        default=McConfig().adaptive_budget,
        help="adaptive cap, continuations per step",
    )
    p.add_argument("--skip-b", action="store_true", help="skip part (b)")
    p.add_argument(
        "--pivot",
        action="store_true",
        help="part (c): the pivot task's tiny policy (gpo bootstrap --task pivot; minutes)",
    )
    p.add_argument("--b-prompts", type=int, default=100, help="part (b): held-out prompts")
    p.add_argument(
        "--c-prompts",
        type=int,
        default=100,
        help="part (c): held-out prompts (its chains are 2-3x part (b)'s: searches cost more)",
    )
    p.add_argument("--b-ks", type=int, nargs="+", default=[4, 8], help="part (b): uniform Ks")
    p.add_argument("--b-max-new-tokens", type=int, default=48, help="part (b): token cap")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from ops.bench.critical_policy import part_b  # it imports the rows from here

    args = parse_args(argv)
    parts = []
    start = time.perf_counter()
    for family in args.families:
        parts.append(part_a(args, family))
    print(f"part (a) took {time.perf_counter() - start:.1f} s")
    if not args.skip_b:
        start = time.perf_counter()
        text = part_b(args)
        parts += [text] if text else []
        print(f"part (b) took {time.perf_counter() - start:.1f} s")
    if args.pivot:
        start = time.perf_counter()
        text = part_b(args, pivot=True)
        parts += [text] if text else []
        print(f"part (c) took {time.perf_counter() - start:.1f} s")
    if args.write_results:
        argv_text = " ".join(argv if argv is not None else sys.argv[1:])
        command = f"`gpo bench critical-step {argv_text}`".replace(" `", "`")
        body = "\n\n".join([f"Command: {command}; machine: {machine_line()}.", *parts])
        print(f"wrote {write_section('critical-step', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
