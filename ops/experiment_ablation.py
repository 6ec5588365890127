"""`gpo experiment ablation`: GPO against its baselines, several seeds, at equal updates and
at equal wall-clock.

    gpo experiment ablation [--study selection|clip|advantage|budget|pivot|pivot-map|all]
                            [--seeds 0 1 2] [--minutes 3] [--write-results] [--report-only]

Each run is a whole `gpo launch` of a study's configuration (learner, 1 actor, 1 estimator,
private redis-server, a tiny base policy; `demo.toml`: the arithmetic task, `pivot.toml`:
the pivot task) for `--minutes`, with one arm's fields switched by `--set` and the seed of
the learner, the actor and the estimator set to the run's seed. Studies (GPO.md: baselines
by switching one field; `all` runs the demo's):

- `selection`: GPO (`advantage`, `mc` advantages, batches of exactly half resets, reset
  rollouts baselined leave-one-out) against arms that differ from it or from each other in
  one thing: PPO with the same estimator (`mc`: `none`, no resets; `group`: plain PPO,
  no MC search; `gae`), GPO with the `group` and `gae` estimators, `random` reset, GPO at
  PPO's fresh data per update (64 fresh + 64 resets), and GPO with the former reset baseline
  V(s_m); paired tables against GPO, against plain PPO, and for each one-thing pair;
- `clip`: GPO and PPO (`group`) with 4 minibatches per batch, where PPO's clip binds (the
  default's single optimizer step per batch runs at ratio 1);
- `pivot` (run with `--seeds 0 1 2 3 4 --minutes 15`): on the pivot task, where one step of
  a long chain decides the outcome, plain PPO against GPO with the same estimator (`group`),
  GPO with MC advantages, random reset and PPO with MC advantages; compared at equal
  updates, equal generated tokens (every actor and estimator) and equal wall-clock;
- `pivot-map` (`--seeds 0 1 2 --minutes 15`): GPO - PPO (`group`) in each cell of chain
  length (8, 16 steps) x pivot difficulty (a 1- or 2-digit factor), the base policy
  bootstrapped on each cell's task;
- `advantage`: under GPO, the learner's advantages `mc` (VinePPO-style), `group`
  (GRPO-style), `gae` (value head, the paper's);
- `budget`: under GPO, uniform K = 4 (the default) and the adaptive budget, which spends
  about as much (about 4.2 continuations per step) and finds the critical step about as well
  as uniform K = 8 (`gpo bench critical-step`); and uniform K = 4 with `share_states` and
  `reuse_mc_rollouts` (`gpo-lean`: less generation per trained sample, `gpo bench
  gpo-overhead`).

An arm shared by several studies of one config runs once. Runs go seed-major, arms
interleaved, so a slow patch of a shared machine falls on every arm alike. A finished run
leaves a small summary in docs/results/ablation/<config>/ (commit it): a run whose summary
has the same settings is not run again, so an experiment resumes after an interruption, on
another machine too, and the report is rebuilt from the summaries.

Read-out, from each run's own learner log (`learner/run_log.jsonl`): held-out pass@1 (500
prompts, temperature 1) every `--eval-every` updates, the same cadence for every arm. "Equal
wall-clock" compares the arms at the training time every run of the study reached (T),
where training time is the learner's clock less the time it spent evaluating (an evaluation
stops the learner, and arms that update faster evaluate more often). "Equal updates"
compares two arms at the largest update count every run of both reached (U; arms differ a
lot in updates per minute, so U is taken per pair). One number per run is the mean of its
evaluations in the last third of the window ((2T/3, T] or (2U/3, U]), which averages out
some of the noise of single evaluations; tables give mean, standard deviation and range
over seeds, and paired differences.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ops.report import read_jsonl
from ops.results import PLOTS, machine_line, markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
SUMMARIES = PLOTS / "ablation"
"""One small JSON per finished run (`<arm>-s<seed>.json`: its settings and its curve),
committed with the results: a rerun skips a run whose summary has the same settings, so an
experiment longer than a session resumes on another machine, and the report is rebuilt from
the summaries alone."""

NO_RESETS = {"learner.reset_fraction": "0.0"}
"""Arms without resets train all-fresh batches: the learner does not wait for resets."""
NO_MC = {"estimator.mc.selection": '"none"', "estimator.mc_values": "false", **NO_RESETS}
"""No MC search at all (plain PPO): the estimator only turns trajectories into samples."""

ARMS: dict[str, dict[str, str]] = {
    # the defaults: selection advantage, advantage mc, uniform K = 4, batches of 64 with
    # exactly 32 resets, reset rollouts baselined leave-one-out
    "gpo": {},
    "none": {"estimator.mc.selection": '"none"', **NO_RESETS},  # PPO with MC advantages
    "random": {"estimator.mc.selection": '"random"'},
    "ppo": {**NO_MC, "learner.advantage": '"group"'},  # plain PPO: group advantages
    "gpo-group": {"learner.advantage": '"group"'},
    "ppo-gae": {**NO_MC, "learner.advantage": '"gae"'},
    "gpo-gae": {"learner.advantage": '"gae"'},
    # GPO at equal fresh data per update: PPO's 64 fresh samples, 64 resets on top
    "gpo-fresh": {"learner.batch_mode": '"fresh"'},
    # the reset baseline before: reward - V(s_m), the estimate that chose the step
    "gpo-value": {"learner.reset_baseline": '"value"'},
    # a regime where PPO's clip binds: 4 optimizer steps per batch (minibatches of 16)
    "ppo-clip": {**NO_MC, "learner.advantage": '"group"', "learner.minibatches": "4"},
    "gpo-clip": {"learner.advantage": '"group"', "learner.minibatches": "4"},
    "gpo-adaptive": {"estimator.mc.budget": '"adaptive"'},
    # GPO with the MC search's two savings: a state shared in a batch estimated once, and the
    # continuations drawn from s_m trained as the reset rollouts
    "gpo-lean": {"estimator.mc.share_states": "true", "estimator.reuse_mc_rollouts": "true"},
}
"""Arm name -> the `--set` fields that make it (TOML values)."""


def pivot_cell(steps: int, digits: int) -> dict[str, str]:
    """The `--set` fields that run the pivot task with chains of `steps` and a pivot factor
    of `digits` digits (the base policy bootstrapped on the same task)."""
    options = (
        f"{{ min_steps = {steps}, max_steps = {steps}, pivot_digits = {digits}, "
        'pivot_position = "random" }'
    )
    tokens = str(12 * steps + 8)  # a full canonical solution fits
    return {
        "launch.bootstrap": options.replace("{ ", '{ task = "pivot", '),
        **{f"{role}.task_options": options for role in ("learner", "actor", "estimator")},
        "actor.rollout.max_new_tokens": tokens,
        "estimator.rollout.max_new_tokens": tokens,
        "learner.eval_max_new_tokens": tokens,
    }


CELLS: dict[str, dict[str, str]] = {
    f"L{steps}-d{digits}": pivot_cell(steps, digits) for steps in (8, 16) for digits in (1, 2)
}
"""The pivot map's cells: chain length (8, 16 steps) x pivot difficulty (factor digits)."""


def arm_sets(arm: str) -> dict[str, str]:
    """The `--set` fields of an arm, `<arm>` or `<arm>@<cell>`."""
    name, _, cell = arm.partition("@")
    return {**ARMS[name], **(CELLS[cell] if cell else {})}


@dataclass(frozen=True)
class Study:
    title: str
    arms: tuple[tuple[str, str], ...]
    """(arm, label in this study); the first is the reference of the paired differences."""
    pairs: tuple[tuple[str, str, str], ...] = ()
    """(a, b, what a - b isolates): further paired differences, e.g. arms that differ in
    the resets alone. Every study also compares each arm to its first arm, and to plain PPO
    when the study has it."""
    config: str = "demo.toml"
    """The run config under ops/configs/ (`--config` overrides it)."""
    cells: tuple[str, ...] = ()
    """Task settings (`CELLS`) every arm runs in, as `<arm>@<cell>`: a map of the pairs."""

    def run_arms(self) -> list[str]:
        """Every arm the study runs, per cell when it has cells."""
        arms = [a for a, _ in self.arms]
        return [f"{a}@{c}" for c in self.cells for a in arms] if self.cells else arms


STUDIES: dict[str, Study] = {
    "selection": Study(
        "where to reset, and GPO against PPO with the same advantage estimator",
        (
            ("gpo", "GPO (mc)"),
            ("none", "PPO (mc: no resets)"),
            ("random", "random reset (mc)"),
            ("ppo", "plain PPO (group, no MC)"),
            ("gpo-group", "GPO (group)"),
            ("ppo-gae", "PPO (gae, no MC)"),
            ("gpo-gae", "GPO (gae)"),
            ("gpo-fresh", "GPO (mc), 64 fresh + 64 resets"),
            ("gpo-value", "GPO (mc), reset baseline V(s_m)"),
        ),
        (
            ("gpo", "none", "resets, estimator mc"),
            ("gpo-group", "ppo", "resets, estimator group"),
            ("gpo-gae", "ppo-gae", "resets, estimator gae"),
            ("gpo-fresh", "none", "resets on top of PPO's batch, estimator mc"),
            ("gpo", "random", "where to reset"),
            ("gpo", "gpo-value", "leave-one-out reset baseline against V(s_m)"),
            ("gpo", "gpo-fresh", "exact share 0.5 of 64 against 64 fresh + 64 resets"),
        ),
    ),
    "clip": Study(
        "GPO against PPO where PPO's clip binds (4 minibatches per batch)",
        (("gpo-clip", "GPO (group), 4 minibatches"), ("ppo-clip", "PPO (group), 4 minibatches")),
        (("gpo-clip", "ppo-clip", "resets, estimator group, clip binding"),),
    ),
    "pivot": Study(
        "GPO against PPO on the pivot task (one hard step in a chain of easy ones)",
        (
            ("ppo", "plain PPO (group, no MC)"),
            ("gpo-group", "GPO (group)"),
            ("gpo", "GPO (mc)"),
            ("random", "random reset (mc)"),
            ("none", "PPO (mc: no resets)"),
        ),
        (
            ("gpo-group", "ppo", "resets, estimator group"),
            ("gpo", "none", "resets, estimator mc"),
            ("gpo", "random", "where to reset"),
        ),
        config="pivot.toml",
    ),
    "pivot-map": Study(
        "GPO - PPO (group) over chain length x pivot difficulty on the pivot task",
        (("ppo", "plain PPO (group, no MC)"), ("gpo-group", "GPO (group)")),
        (("gpo-group", "ppo", "resets, estimator group"),),
        config="pivot.toml",
        cells=tuple(CELLS),
    ),
    "advantage": Study(
        "advantage estimator under GPO",
        (("gpo", "mc"), ("gpo-group", "group"), ("gpo-gae", "gae")),
    ),
    "budget": Study(
        "MC budget under GPO",
        (
            ("gpo", "uniform K=4"),
            ("gpo-adaptive", "adaptive (cap 4.5 per step)"),
            ("gpo-lean", "uniform K=4, share_states + reuse_mc_rollouts"),
        ),
    ),
}
PLAIN_PPO = "ppo"


# ------------------------------------------------------------------ reading one run


@dataclass(frozen=True)
class Curve:
    """One run's held-out evaluations."""

    steps: list[int]
    seconds: list[float]
    """Training seconds at each evaluation: learner clock less evaluation time so far."""
    pass_at_1: list[float]
    duration: float
    """Training seconds at the run's last record (same clock as `seconds`)."""
    updates: int
    resets: int
    samples: int
    tokens: list[float] = dataclasses.field(default_factory=list)
    """Tokens generated by every actor and estimator up to each evaluation (from the
    launcher's progress records, matched by update count); empty when unknown."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Curve:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def read_curve(run_dir: Path) -> Curve | None:
    """The evaluations of one run, or None when it has none."""
    log = read_jsonl(run_dir / "learner" / "run_log.jsonl")
    evals = [r for r in log if r.get("event") == "eval"]
    if not evals:
        return None
    steps, seconds, scores, eval_time = [], [], [], 0.0
    t0 = None
    for e in evals:
        eval_time += e.get("seconds", 0.0)
        t = e["t"] - eval_time
        t0 = t if t0 is None else t0
        steps.append(int(e["step"]))
        seconds.append(max(0.0, t - t0))
        scores.append(float(e["pass_at_1"]))
    updates = [r for r in log if r.get("event") == "update"]
    last_t = max([e["t"] for e in evals] + [r["t"] for r in updates])
    return Curve(
        steps=steps,
        seconds=seconds,
        pass_at_1=scores,
        duration=max(seconds[-1], last_t - eval_time - t0),
        updates=max((int(r["step"]) for r in updates), default=0),
        resets=sum(int(r.get("resets", 0)) for r in updates),
        samples=sum(int(r.get("samples", 0)) for r in updates),
        tokens=tokens_at(read_jsonl(run_dir / "progress.jsonl"), steps),
    )


GENERATED = ("gpo_actor_generated_tokens_total", "gpo_estimator_generated_tokens_total")
"""The counters whose sum over processes is a run's generated tokens."""


def tokens_at(progress: list[dict], steps: list[int]) -> list[float]:
    """Generated tokens (all actors and estimators) when the learner reached each of
    `steps`, interpolated between the launcher's progress records by their update counts;
    [] when the records lack either count."""
    updates, tokens = [0.0], [0.0]
    for rec in progress:
        procs = rec.get("processes", {})
        done = procs.get("learner", {}).get("gpo_learner_updates_total")
        made = [m.get(name) for m in procs.values() for name in GENERATED if name in m]
        if done is None or not made:
            continue
        if done > updates[-1]:
            updates.append(float(done))
            tokens.append(float(sum(made)))
    if len(updates) < 2:
        return []
    return [float(np.interp(s, updates, tokens)) for s in steps]


def window_mean(xs: list[float], ys: list[float], end: float) -> float:
    """Mean of the ys whose x lies in (2 end / 3, end]; the last y at or before `end` when the
    window holds none. NaN when there is nothing at or before `end`."""
    lo = 2.0 * end / 3.0
    inside = [y for x, y in zip(xs, ys) if lo < x <= end]
    if inside:
        return sum(inside) / len(inside)
    before = [y for x, y in zip(xs, ys) if x <= end]
    return before[-1] if before else math.nan


def spread(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, sample standard deviation, min, max); std is 0 for one value."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return (math.nan,) * 4
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return statistics.fmean(vals), std, min(vals), max(vals)


def fmt(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


# ------------------------------------------------------------------ running


def run_id(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


def run_settings(arm: str, seed: int, minutes: float, eval_every: int, config: Path) -> dict:
    """What makes a run: the config, its length and the `--set` fields of its arm and seed."""
    sets = {
        "learner.seed": str(seed),
        "actor.rollout.seed": str(seed),
        "estimator.rollout.seed": str(seed),
        "learner.eval_every": str(eval_every),
        **arm_sets(arm),
    }
    return {"config": config.name, "minutes": minutes, "sets": sets}


def summary_path(config: Path, arm: str, seed: int) -> Path:
    """Where a run's summary is kept: one folder per config."""
    return SUMMARIES / config.stem / f"{run_id(arm, seed)}.json"


def load_summary(config: Path, arm: str, seed: int, settings: dict | None = None) -> Curve | None:
    """The committed curve of a finished run; None when there is none, or (with `settings`)
    when it was made with other settings."""
    path = summary_path(config, arm, seed)
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    if settings is not None and d.get("settings") != settings:
        return None
    return Curve.from_json(d["curve"])


def launch_one(
    out: Path, config: Path, arm: str, seed: int, minutes: float, eval_every: int
) -> None:
    """One `gpo launch` of `arm` with `seed`; its console goes to <run>/launch.log and its
    summary to `SUMMARIES`."""
    settings = run_settings(arm, seed, minutes, eval_every, config)
    if load_summary(config, arm, seed, settings) is not None:
        print(f"  {run_id(arm, seed)}: done before, kept", flush=True)
        return
    run = out / config.stem / run_id(arm, seed)
    if run.exists():  # an interrupted run: start it again from nothing
        subprocess.run(["rm", "-rf", str(run)], check=True)
    run.mkdir(parents=True)
    sets = {"launch.runs_dir": json.dumps(str(run.parent)), "launch.report": "false"}
    sets |= settings["sets"]
    cmd = [
        sys.executable,
        "-m",
        "ops.launch",
        "--config",
        str(config),
        "--run-id",
        run_id(arm, seed),
    ]
    cmd += ["--max-minutes", str(minutes)]
    cmd += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    start = time.monotonic()
    with (run / "launch.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    curve = read_curve(run)
    took = time.monotonic() - start
    if rc != 0 or curve is None:
        raise SystemExit(
            f"gpo experiment ablation: run {run} failed (exit {rc}); see {run}/launch.log"
        )
    path = summary_path(config, arm, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {"arm": arm, "seed": seed, "settings": settings, "seconds": round(took, 1)}
    summary["curve"] = curve.to_json()
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"  {run_id(arm, seed)}: {curve.updates} updates, pass@1 {curve.pass_at_1[0]:.3f} -> "
        f"{curve.pass_at_1[-1]:.3f} ({took:.0f} s)",
        flush=True,
    )


# ------------------------------------------------------------------ reporting


def study_report(
    name: str, curves: dict[tuple[str, int], Curve], seeds: list[int], minutes: float
) -> str:
    """The markdown section of one study, and its plot in docs/results/."""
    study = STUDIES[name]
    if study.cells:
        return map_report(name, curves, seeds, minutes)
    runs = {(a, s): curves[(a, s)] for a, _ in study.arms for s in seeds if (a, s) in curves}
    if not runs:
        return "(no runs found)"
    t_end = min(c.duration for c in runs.values())
    arms = {a: [runs[(a, s)] for s in seeds if (a, s) in runs] for a, _ in study.arms}
    labels = dict(study.arms)
    rows = []
    for arm, cs in arms.items():
        if not cs:
            continue
        at_t = spread([window_mean(c.seconds, c.pass_at_1, t_end) for c in cs])
        final = spread([window_mean(c.steps, c.pass_at_1, c.steps[-1]) for c in cs])
        upd = spread([float(c.updates) for c in cs])
        reset_share = spread([c.resets / c.samples if c.samples else math.nan for c in cs])
        rows.append(
            [
                labels[arm],
                len(cs),
                f"{spread([c.pass_at_1[0] for c in cs])[0]:.3f}",
                f"{fmt(*at_t[:2])} [{at_t[2]:.3f}, {at_t[3]:.3f}]",
                f"{fmt(*final[:2])} [{final[2]:.3f}, {final[3]:.3f}]",
                f"{upd[0]:.0f} ± {upd[1]:.0f}",
                "n/a" if math.isnan(reset_share[0]) else f"{reset_share[0]:.2f}",
            ]
        )
    table = markdown_table(
        [
            "arm",
            "seeds",
            "base pass@1",
            f"pass@1 at equal time (T = {t_end:.0f} s)",
            "pass@1 at the end of its run",
            f"updates in {minutes:g} min",
            "reset share",
        ],
        rows,
    )
    tables = []
    for title, pairs in comparisons(study):
        rows = [
            row
            for a, b, what in pairs
            for row in paired_rows(runs, seeds, t_end, a, b, what, labels)
        ]
        if rows:
            tables.append(
                f"{title}:\n\n"
                + markdown_table(
                    ["difference", "isolates", "at", "mean ± std over seeds", "range"], rows
                )
            )
    plot = plot_study(name, runs, seeds)
    per_seed = markdown_table(
        ["run", "updates", "evaluations", "pass@1 first → last", "best"],
        [
            [
                f"{label} s{s}",
                runs[(a, s)].updates,
                len(runs[(a, s)].steps),
                f"{runs[(a, s)].pass_at_1[0]:.3f} → {runs[(a, s)].pass_at_1[-1]:.3f}",
                f"{max(runs[(a, s)].pass_at_1):.3f}",
            ]
            for a, label in study.arms
            for s in seeds
            if (a, s) in runs
        ],
    )
    return "\n\n".join(
        [
            f"Study `{name}` ({study.title}); seeds {seeds}, {minutes:g} minutes per run; "
            f"machine: {machine_line()}.",
            "One value per run: the mean of its held-out evaluations (500 prompts each) in the "
            "last third of the window; mean ± std [min, max] over seeds.",
            table,
            "Paired by seed (same seed = same LoRA initialisation, same sampling seeds).",
            *tables,
            f"![{name}](results/{plot})",
            "<details><summary>per run</summary>\n\n" + per_seed + "\n\n</details>",
        ]
    )


def map_report(
    name: str, curves: dict[tuple[str, int], Curve], seeds: list[int], minutes: float
) -> str:
    """A study over cells: its pairs in every cell, at equal time, updates and tokens."""
    study = STUDIES[name]
    labels = dict(study.arms)
    rows, per_run = [], []
    for cell in study.cells:
        runs = {
            (a, s): curves[(f"{a}@{cell}", s)]
            for a, _ in study.arms
            for s in seeds
            if (f"{a}@{cell}", s) in curves
        }
        if not runs:
            continue
        t_end = min(c.duration for c in runs.values())
        for a, b, what in study.pairs:
            rows += [[cell, *r] for r in paired_rows(runs, seeds, t_end, a, b, what, labels)]
        per_run += [
            [cell, f"{labels[a]} s{s}", c.updates, f"{c.pass_at_1[0]:.3f} → {c.pass_at_1[-1]:.3f}"]
            for (a, s), c in runs.items()
        ]
    if not rows:
        return "(no runs found)"
    head = ["cell", "difference", "isolates", "at", "mean ± std over seeds", "range"]
    return "\n\n".join(
        [
            f"Study `{name}` ({study.title}); cells {', '.join(study.cells)} (L: steps per "
            f"chain, d: digits of the pivot factor); seeds {seeds}, {minutes:g} minutes per "
            f"run; machine: {machine_line()}.",
            markdown_table(head, rows),
            "<details><summary>per run</summary>\n\n"
            + markdown_table(["cell", "run", "updates", "pass@1 first → last"], per_run)
            + "\n\n</details>",
        ]
    )


def comparisons(study: Study) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """The paired tables of a study: its own pairs, against its first arm, against plain PPO."""
    first = study.arms[0][0]
    out = []
    if study.pairs:
        out.append(("Arms that differ in one thing", list(study.pairs)))
    out.append((f"Against {dict(study.arms)[first]}", [(first, a, "") for a, _ in study.arms[1:]]))
    if PLAIN_PPO in dict(study.arms) and first != PLAIN_PPO:
        out.append(
            (
                "Against plain PPO",
                [(a, PLAIN_PPO, "") for a, _ in study.arms if a != PLAIN_PPO],
            )
        )
    return out


def paired_rows(
    runs: dict[tuple[str, int], Curve],
    seeds: list[int],
    t_end: float,
    a: str,
    b: str,
    what: str,
    labels: dict[str, str],
) -> list[list[str]]:
    """a − b at equal time (T), at equal updates (U: the most both reached in every seed)
    and, when the runs know them, at equal generated tokens (G, likewise), paired by seed."""
    pairs = [(runs[(a, s)], runs[(b, s)]) for s in seeds if (a, s) in runs and (b, s) in runs]
    if not pairs:
        return []
    u_end = min(min(x.steps[-1], y.steps[-1]) for x, y in pairs)
    axes = [("equal time", "seconds", t_end), (f"equal updates (U = {u_end})", "steps", u_end)]
    if all(x.tokens and y.tokens for x, y in pairs):
        g_end = min(min(x.tokens[-1], y.tokens[-1]) for x, y in pairs)
        axes.append((f"equal generated tokens (G = {g_end / 1e6:.2f} M)", "tokens", g_end))
    rows = []
    for at, key, end in axes:
        d = [
            window_mean(getattr(x, key), x.pass_at_1, end)
            - window_mean(getattr(y, key), y.pass_at_1, end)
            for x, y in pairs
        ]
        m, sd, lo, hi = spread(d)
        rows.append([f"{labels[a]} − {labels[b]}", what, at, fmt(m, sd), f"[{lo:+.3f}, {hi:+.3f}]"])
    return rows


def plot_study(name: str, runs: dict[tuple[str, int], Curve], seeds: list[int]) -> str:
    """Mean curve over seeds with the min-max band, against updates and against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    PLOTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, label in STUDIES[name].arms:
        cs = [runs[(arm, s)] for s in seeds if (arm, s) in runs]
        if not cs:
            continue
        for ax, key in ((axes[0], "steps"), (axes[1], "seconds")):
            end = min(getattr(c, key)[-1] for c in cs)
            grid = np.linspace(0, end, 40)
            ys = np.array([np.interp(grid, getattr(c, key), c.pass_at_1) for c in cs])
            (line,) = ax.plot(grid, ys.mean(0), label=label)
            ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
    axes[0].set_xlabel("learner updates")
    axes[1].set_xlabel("training seconds (evaluation time excluded)")
    for ax in axes:
        ax.set_ylabel("held-out pass@1")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"ablation: {STUDIES[name].title} (mean over {len(seeds)} seeds, band = min-max)")
    fig.tight_layout()
    path = PLOTS / f"ablation-{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


# ------------------------------------------------------------------ command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__.split("\n\n")
    p = argparse.ArgumentParser(
        prog="gpo experiment ablation",
        description="\n\n".join(doc[:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--study", choices=[*STUDIES, "all"], default="all", help="all: the demo's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=3.0, help="training minutes per run")
    p.add_argument(
        "--eval-every", type=int, default=10, help="updates between evaluations, every arm"
    )
    p.add_argument("--config", help="run config (default: the study's, under ops/configs/)")
    p.add_argument("--out", default="runs/ablation", help="directory of the runs")
    p.add_argument("--report-only", action="store_true", help="rebuild tables from the runs")
    p.add_argument("--write-results", action="store_true", help="write docs/RESULTS.md sections")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.eval_every < 1 or not args.seeds:
        p.error("--minutes must be > 0, --eval-every >= 1, and at least one seed given")
    if args.config and not Path(args.config).is_file():
        p.error(f"--config {args.config}: no such file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.study == "all":  # the studies of the demo's configuration
        studies = [n for n, st in STUDIES.items() if st.config == "demo.toml" and not st.cells]
    else:
        studies = [args.study]
    out = Path(args.out).resolve()
    for name in studies:
        study = STUDIES[name]
        config = Path(args.config or ROOT / "ops" / "configs" / study.config).resolve()
        arms = study.run_arms()
        if not args.report_only:
            total = len(arms) * len(args.seeds)
            print(
                f"ablation {name}: {total} runs ({', '.join(arms)} x seeds {args.seeds}) of "
                f"{config.name}, {args.minutes:g} training minutes each (about "
                f"{total * (args.minutes + 0.3):.0f} minutes); runs in {out / config.stem}",
                flush=True,
            )
            for seed in args.seeds:
                for arm in arms:
                    launch_one(out, config, arm, seed, args.minutes, args.eval_every)
        curves = {
            (a, s): c
            for a in arms
            for s in args.seeds
            if (
                c := load_summary(
                    config, a, s, run_settings(a, s, args.minutes, args.eval_every, config)
                )
            )
            is not None
        }
        if not curves:
            print(f"gpo experiment ablation: no finished runs of {name}", file=sys.stderr)
            return 2
        body = study_report(name, curves, args.seeds, args.minutes)
        print(f"\n## {name}\n\n{body}\n")
        if args.write_results:
            command = (
                f"`gpo experiment ablation --study {name} --seeds {' '.join(map(str, args.seeds))} "
                f"--minutes {args.minutes:g}`"
            )
            path = write_section(f"ablation-{name}", f"Command: {command}\n\n{body}")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
