"""The run report: `runs/<id>/report.html` with PNG plots, from the run's own records.

    gpo report RUN_DIR
    gpo report RUN_A RUN_B ... [--out DIR]     several runs overlaid (ops/report_compare.py)

Inputs: the learner's run log (`learner/run_log.jsonl`: `update` and `eval` events with
seconds since start) and the launcher's scrapes (`progress.jsonl`). Plots: held-out pass@1
and batch reward against updates and against wall time, the critical-step position
histogram (from the estimators' histogram), and throughput per process (generated tokens,
MC rollouts, trained samples per second). Every plot is also a PNG beside the HTML.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return out


def save_figure(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def plot_learning(log: list[dict], out: Path) -> list[str]:
    updates = [r for r in log if r.get("event") == "update"]
    evals = [r for r in log if r.get("event") == "eval"]
    files = []
    for x_key, x_label, name in (
        ("step", "updates", "learning_vs_updates.png"),
        ("t", "seconds", "learning_vs_time.png"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4))
        if evals:
            ax.plot(
                [e.get(x_key, 0) for e in evals],
                [e["pass_at_1"] for e in evals],
                "o-",
                label="held-out pass@1",
            )
        if updates:
            ax.plot(
                [u.get(x_key, 0) for u in updates],
                [u.get("reward_mean", 0) for u in updates],
                ".",
                alpha=0.5,
                label="batch reward",
            )
        ax.set_xlabel(x_label)
        ax.set_ylabel("accuracy / reward")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        ax.set_title(f"accuracy and reward vs {x_label}")
        files.append(save_figure(fig, out / name))
    return files


def _last_processes(progress: list[dict]) -> dict:
    for rec in reversed(progress):
        if any(rec.get("processes", {}).values()):
            return rec["processes"]
    return {}


def plot_critical_steps(progress: list[dict], out: Path) -> str | None:
    """Histogram of critical-step position (index / steps), summed over estimators."""
    buckets: dict[float, float] = {}
    for name, metrics in _last_processes(progress).items():
        if not name.startswith("estimator") or not metrics:
            continue
        for key, value in metrics.items():
            if key.startswith("gpo_estimator_critical_step_position_ratio_bucket:"):
                le = key.split(":", 1)[1]
                if le != "+Inf":
                    buckets[float(le)] = buckets.get(float(le), 0.0) + value
    if not buckets:
        return None
    edges = sorted(buckets)
    cumulative = [buckets[e] for e in edges]
    counts = [c - (cumulative[i - 1] if i else 0) for i, c in enumerate(cumulative)]
    fig, ax = plt.subplots(figsize=(7, 4))
    lefts = [0.0, *edges[:-1]]
    ax.bar(
        lefts,
        counts,
        width=[hi - lo for lo, hi in zip(lefts, edges)],
        align="edge",
        edgecolor="black",
    )
    ax.set_xlabel("critical step position (step index / number of steps)")
    ax.set_ylabel("trajectories")
    ax.set_title("where the critical step lies")
    return save_figure(fig, out / "critical_step_histogram.png")


THROUGHPUT = {
    "actor": ("gpo_actor_generated_tokens_total", "generated tokens/s"),
    "estimator": ("gpo_estimator_mc_rollouts_total", "MC rollouts/s"),
    "learner": ("gpo_learner_samples_trained_total", "trained samples/s"),
}


def throughput_series(progress: list[dict]) -> dict[str, tuple[list[float], list[float], str]]:
    series: dict[str, tuple[list[float], list[float], str]] = {}
    prev: dict[str, tuple[float, float]] = {}
    for rec in progress:
        for name, metrics in rec.get("processes", {}).items():
            role = name.split("-")[0]
            if not metrics or role not in THROUGHPUT:
                continue
            metric, label = THROUGHPUT[role]
            value = metrics.get(metric)
            if value is None:
                continue
            if name in prev and rec["t"] > prev[name][0]:
                rate = (value - prev[name][1]) / (rec["t"] - prev[name][0])
                xs, ys, _ = series.setdefault(name, ([], [], label))
                xs.append(rec["t"])
                ys.append(max(rate, 0.0))
            prev[name] = (rec["t"], value)
    return series


def plot_throughput(progress: list[dict], out: Path) -> str | None:
    series = throughput_series(progress)
    if not series:
        return None
    roles = sorted({name.split("-")[0] for name in series})
    fig, axes = plt.subplots(len(roles), 1, figsize=(7, 2.6 * len(roles)), squeeze=False)
    for ax, role in zip(axes[:, 0], roles):
        for name, (xs, ys, label) in sorted(series.items()):
            if name.split("-")[0] == role:
                ax.plot(xs, ys, label=name)
                ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle("throughput per process")
    return save_figure(fig, out / "throughput.png")


TOKENS = {
    "actor": ("gpo_actor_generated_tokens_total", "generated"),
    "estimator": ("gpo_estimator_generated_tokens_total", "MC continuations generated"),
    "learner": ("gpo_learner_tokens_trained_total", "trained on"),
}
"""Each role's token counter, and what its tokens are."""


def tokens_per_second(progress: list[dict]) -> dict[str, float]:
    """Each process's mean token rate over the run, from the first to the last record that
    has its counter (`TOKENS`)."""
    first: dict[str, tuple[float, float]] = {}
    last: dict[str, tuple[float, float]] = {}
    for rec in progress:
        for name, metrics in rec.get("processes", {}).items():
            metric = TOKENS.get(name.split("-")[0], ("", ""))[0]
            value = (metrics or {}).get(metric)
            if value is not None:
                first.setdefault(name, (rec["t"], value))
                last[name] = (rec["t"], value)
    return {
        name: round((last[name][1] - v0) / (last[name][0] - t0), 1)
        for name, (t0, v0) in sorted(first.items())
        if last[name][0] > t0
    }


def standard_error(record: dict | None) -> float | None:
    """The binomial standard error of an evaluation's pass@1 over its `n` prompts."""
    if not record or not record.get("n"):
        return None
    p = record["pass_at_1"]
    return round(math.sqrt(p * (1 - p) / record["n"]), 4)


def summary(log: list[dict], progress: list[dict]) -> dict:
    evals = [r for r in log if r.get("event") == "eval"]
    updates = [r for r in log if r.get("event") == "update"]
    return {
        "updates": max((u.get("step", 0) for u in updates), default=0),
        "wall_minutes": round((progress[-1]["t"] if progress else 0) / 60, 1),
        "pass_at_1_first": evals[0]["pass_at_1"] if evals else None,
        "pass_at_1_first_se": standard_error(evals[0] if evals else None),
        "pass_at_1_last": evals[-1]["pass_at_1"] if evals else None,
        "pass_at_1_last_se": standard_error(evals[-1] if evals else None),
        "pass_at_1_best": max((e["pass_at_1"] for e in evals), default=None),
        "evals": len(evals),
        **{f"tokens_per_s:{name}": rate for name, rate in tokens_per_second(progress).items()},
    }


LABELS = {
    "updates": "updates",
    "wall_minutes": "wall time (minutes)",
    "pass_at_1_first": "held-out pass@1, first evaluation",
    "pass_at_1_first_se": "held-out pass@1, first evaluation: standard error",
    "pass_at_1_last": "held-out pass@1, last evaluation",
    "pass_at_1_last_se": "held-out pass@1, last evaluation: standard error",
    "pass_at_1_best": "held-out pass@1, best evaluation",
    "evals": "evaluations",
}
"""How the report names each `summary` key (summary.json keeps the keys)."""


def label(key: str) -> str:
    """The report's name of a `summary` key."""
    if key.startswith("tokens_per_s:"):
        name = key.split(":", 1)[1]
        return f"tokens/s, {name} ({TOKENS[name.split('-')[0]][1]})"
    return LABELS.get(key, key)


def shown(value) -> str:
    """A table cell: "–" for no value (e.g. before the first evaluation), ratios to 3 places."""
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "–"
    return str(value)


def table(rows: dict, element_id: str) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(shown(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f'<table id="{element_id}">{cells}</table>'


def run_facts(run_dir: Path) -> dict:
    """What the run was (launch.json): its config, base model, overrides and software."""
    path = run_dir / "launch.json"
    if not path.is_file():
        return {}
    launch = json.loads(path.read_text())
    facts = {
        "run id": launch.get("run_id"),
        "config": launch.get("config"),
        "base model": launch.get("model") or "as each process's config sets it",
        "overrides (--set)": launch.get("sets", []),
        "processes": ", ".join(launch.get("workers", {})),
    }
    facts.update({f"version: {k}": v for k, v in launch.get("software", {}).items()})
    return facts


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    log = read_jsonl(run_dir / "learner" / "run_log.jsonl")
    progress = read_jsonl(run_dir / "progress.jsonl")
    images = plot_learning(log, run_dir)
    images += [
        f for f in (plot_critical_steps(progress, run_dir), plot_throughput(progress, run_dir)) if f
    ]
    s = summary(log, progress)
    (run_dir / "summary.json").write_text(json.dumps(s, indent=2) + "\n")
    minutes = s["wall_minutes"]
    results = table(
        {label(k): f"{minutes:.1f}" if k == "wall_minutes" else v for k, v in s.items()},
        "summary",
    )
    facts = run_facts(run_dir)
    figs = "".join(
        f'<figure><img src="{html.escape(f)}" alt="{html.escape(f)}"><figcaption>{html.escape(f)}'
        "</figcaption></figure>"
        for f in images
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>GPO run {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}figure{{margin:1.5em 0}}img{{max-width:100%}}</style>
</head><body>
<h1>GPO run {html.escape(run_dir.name)}</h1>
{results}
{figs}
<h2>The run</h2>
{table(facts, "run") if facts else "<p>No launch.json: not started by gpo launch.</p>"}
</body></html>
"""
    path = run_dir / "report.html"
    path.write_text(page)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gpo report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (runs/<id>)")
    p.add_argument(
        "--out",
        help="with several runs: directory of the comparison page (default: runs/compare)",
    )
    args = p.parse_args(argv)
    runs = [Path(r) for r in args.run_dirs]
    for run in runs:
        if not run.is_dir():
            print(f"gpo report: error: no such run directory: {run}", file=sys.stderr)
            return 2
    if len(runs) == 1:
        print(write_report(runs[0]))
        return 0
    from ops.report_compare import write_comparison  # it reads curves through ablation_report

    try:
        print(write_comparison(runs, Path(args.out or "runs/compare")))
    except ValueError as e:
        print(f"gpo report: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
