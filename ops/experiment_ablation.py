"""`gpo experiment ablation`: GPO against its baselines, several seeds, at equal updates and
at equal wall-clock.

    gpo experiment ablation [--study selection|advantage|budget|all] [--seeds 0 1 2]
                            [--minutes 3] [--write-results] [--report-only]

Each run is a whole `gpo launch` of the demo configuration (learner, 1 actor, 1 estimator,
private redis-server, the tiny base policy on the synthetic arithmetic task) for `--minutes`,
with one arm's fields switched by `--set` and the seed of the learner, the actor and the
estimator set to the run's seed. Studies (GPO.md: baselines by switching one field):

- `selection`: `advantage` (GPO), and by switching that one field `none` (no resets, the same
  MC advantages: VinePPO-style PPO) and `random` (Satori-style random reset); beside them
  plain PPO, which spends nothing on MC (`none`, no MC search, group advantages);
- `advantage`: under GPO, the learner's advantages `mc` (VinePPO-style), `group`
  (GRPO-style), `gae` (value head, the paper's);
- `budget`: under GPO, uniform K = 4 (the default) and the adaptive budget, which spends
  about as much (about 4.2 continuations per step) and finds the critical step about as well
  as uniform K = 8 (`gpo bench critical-step`); and uniform K = 4 with `share_states` and
  `reuse_mc_rollouts` (`gpo-lean`: less generation per trained sample, `gpo bench
  gpo-overhead`).

The GPO arm with the defaults is shared by the three studies. Runs go seed-major, arms
interleaved, so a slow patch of a shared machine falls on every arm alike. A finished run
(`done.json` in its directory) is not run again, so an interrupted experiment resumes.

Read-out, from each run's own learner log (`learner/run_log.jsonl`): held-out pass@1 (500
prompts, temperature 1) every `eval_every` updates. "Equal wall-clock" compares the arms at
the training time every run of the study reached (T), where training time is the
learner's clock less the time it spent evaluating (an evaluation stops the learner, and arms
that update faster evaluate more often). "Equal updates" compares two arms at the largest
update count every run of both reached (U; arms differ a lot in updates per minute, so U is
taken per pair). One number per run is the mean of its evaluations in the last third of the
window ((2T/3, T] or (2U/3, U]), which averages out some of the noise of single evaluations;
tables give mean, standard deviation and range over seeds, and paired differences to the
study's reference arm.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ops.report import read_jsonl
from ops.results import PLOTS, machine_line, markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]

ARMS: dict[str, dict[str, str]] = {
    "gpo": {},  # the defaults: selection advantage, advantage mc, uniform K = 4
    # about 20 updates in 3 minutes: evaluate every 5 so that its curve has points
    "none": {"estimator.mc.selection": '"none"', "learner.eval_every": "5"},
    "random": {"estimator.mc.selection": '"random"'},
    "ppo": {  # plain PPO: no resets, no MC search; advantage = reward - mean of the group
        "estimator.mc.selection": '"none"',
        "estimator.mc_values": "false",
        "learner.advantage": '"group"',
    },
    "gpo-group": {"learner.advantage": '"group"'},
    "gpo-gae": {"learner.advantage": '"gae"'},
    "gpo-adaptive": {"estimator.mc.budget": '"adaptive"'},
    # GPO with the MC search's two savings: a state shared in a batch estimated once, and the
    # continuations drawn from s_m trained as the reset rollouts
    "gpo-lean": {"estimator.mc.share_states": "true", "estimator.reuse_mc_rollouts": "true"},
}
"""Arm name -> the `--set` fields that make it (TOML values)."""


@dataclass(frozen=True)
class Study:
    title: str
    arms: tuple[tuple[str, str], ...]
    """(arm, label in this study); the first is the reference of the paired differences."""


STUDIES: dict[str, Study] = {
    "selection": Study(
        "where to reset",
        (
            ("gpo", "advantage (GPO)"),
            ("none", "none (PPO, MC advantages)"),
            ("random", "random reset"),
            ("ppo", "plain PPO (group advantages, no MC)"),
        ),
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
    )


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


def launch_one(
    out: Path, config: Path, arm: str, seed: int, minutes: float, eval_every: int
) -> None:
    """One `gpo launch` of `arm` with `seed`; its console goes to <run>/launch.log."""
    run = out / run_id(arm, seed)
    if (run / "done.json").is_file():
        print(f"  {run_id(arm, seed)}: done before, kept", flush=True)
        return
    if run.exists():  # an interrupted run: start it again from nothing
        subprocess.run(["rm", "-rf", str(run)], check=True)
    run.mkdir(parents=True)
    sets = {
        "launch.runs_dir": json.dumps(str(out)),
        "launch.report": "false",
        "learner.seed": str(seed),
        "actor.rollout.seed": str(seed),
        "estimator.rollout.seed": str(seed),
        "learner.eval_every": str(eval_every),
        **ARMS[arm],
    }
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
    (run / "done.json").write_text(
        json.dumps({"arm": arm, "seed": seed, "sets": sets, "minutes": minutes, "seconds": took})
    )
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
    ref_arm, ref_label = study.arms[0]
    diffs = []
    for arm, label in study.arms[1:]:
        pairs = [
            (runs[(ref_arm, s)], runs[(arm, s)])
            for s in seeds
            if (ref_arm, s) in runs and (arm, s) in runs
        ]
        if not pairs:
            continue
        u_end = min(min(a.steps[-1], b.steps[-1]) for a, b in pairs)
        for which, key, end in (
            ("equal time", "seconds", t_end),
            (f"equal updates (U = {u_end})", "steps", u_end),
        ):
            d = [
                window_mean(getattr(a, key), a.pass_at_1, end)
                - window_mean(getattr(b, key), b.pass_at_1, end)
                for a, b in pairs
            ]
            m, sd, lo, hi = spread(d)
            diffs.append([f"{ref_label} − {label}", which, fmt(m, sd), f"[{lo:+.3f}, {hi:+.3f}]"])
    diff_table = markdown_table(["difference", "at", "mean ± std over seeds", "range"], diffs)
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
            "Paired by seed (same seed = same LoRA initialisation, same sampling seeds):",
            diff_table,
            f"![{name}](results/{plot})",
            "<details><summary>per run</summary>\n\n" + per_seed + "\n\n</details>",
        ]
    )


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
    p.add_argument("--study", choices=[*STUDIES, "all"], default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=3.0, help="training minutes per run")
    p.add_argument("--eval-every", type=int, default=20, help="updates between evaluations")
    p.add_argument("--config", default=str(ROOT / "ops" / "configs" / "demo.toml"))
    p.add_argument("--out", default="runs/ablation", help="directory of the runs")
    p.add_argument("--report-only", action="store_true", help="rebuild tables from the runs")
    p.add_argument("--write-results", action="store_true", help="write docs/RESULTS.md sections")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.eval_every < 1 or not args.seeds:
        p.error("--minutes must be > 0, --eval-every >= 1, and at least one seed given")
    if not Path(args.config).is_file():
        p.error(f"--config {args.config}: no such file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    studies = list(STUDIES) if args.study == "all" else [args.study]
    arms = list(dict.fromkeys(a for s in studies for a, _ in STUDIES[s].arms))
    out = Path(args.out).resolve()
    if not args.report_only:
        total = len(arms) * len(args.seeds)
        print(
            f"ablation: {total} runs ({', '.join(arms)} x seeds {args.seeds}), {args.minutes:g} "
            f"training minutes each (about {total * (args.minutes + 0.7):.0f} minutes); runs in {out}",
            flush=True,
        )
        for seed in args.seeds:
            for arm in arms:
                launch_one(
                    out, Path(args.config).resolve(), arm, seed, args.minutes, args.eval_every
                )
    curves = {
        (a, s): c
        for a in arms
        for s in args.seeds
        if (c := read_curve(out / run_id(a, s))) is not None
    }
    if not curves:
        print(f"gpo experiment ablation: no runs with evaluations in {out}", file=sys.stderr)
        return 2
    for name in studies:
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
