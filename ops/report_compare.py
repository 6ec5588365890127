"""Several runs side by side: `gpo report RUN_A RUN_B ... [--out DIR]`.

One HTML page (`compare.html` in `--out`, with its PNGs beside it) overlays the runs' held-out
pass@1 against updates, against training time and against the tokens every actor and
estimator generated: the three axes arms are compared on (docs/RESULTS.md). A table gives
each run's updates, first, last and best evaluation, training minutes and tokens. The curves
come from each run's own records (`ops.experiments.ablation_report.read_curve`: the learner's run log
and the launcher's progress scrapes).
"""

from __future__ import annotations

import html
from pathlib import Path

from ops.experiments.ablation_report import Curve, read_curve
from ops.report import plt, save_figure, shown

AXES = (
    ("updates", "updates", lambda c: c.steps),
    ("time", "training minutes", lambda c: [s / 60 for s in c.seconds]),
    ("tokens", "generated tokens (all actors and estimators)", lambda c: c.tokens),
)
"""(file suffix, x-axis label, the curve's x values at each evaluation)."""


def plot_overlays(curves: dict[str, Curve], out: Path) -> list[str]:
    """One PNG per axis, a line per run; a run without token counts is left off that one."""
    files = []
    for suffix, label, xs in AXES:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, curve in curves.items():
            x = xs(curve)
            if len(x) == len(curve.pass_at_1):
                ax.plot(x, curve.pass_at_1, marker=".", label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("held-out pass@1")
        ax.set_title(f"held-out pass@1 vs {label}")
        ax.legend(loc="best")
        files.append(save_figure(fig, out / f"pass_at_1_vs_{suffix}.png"))
    return files


def comparison_rows(curves: dict[str, Curve]) -> list[list[str]]:
    return [
        [
            name,
            shown(c.updates),
            shown(c.pass_at_1[0]),
            shown(c.pass_at_1[-1]),
            shown(max(c.pass_at_1)),
            f"{c.duration / 60:.1f}",
            shown(f"{c.tokens[-1]:.3g}" if c.tokens else None),
        ]
        for name, c in curves.items()
    ]


HEADER = [
    "run",
    "updates",
    "pass@1, first",
    "pass@1, last",
    "pass@1, best",
    "training minutes",
    "generated tokens",
]


def write_comparison(run_dirs: list[Path], out: Path) -> Path:
    """Write `out/compare.html` and its PNGs; the runs are named by their directories."""
    curves, missing = {}, []
    for run in run_dirs:
        curve = read_curve(run)
        if curve is None:
            missing.append(run.name)
        else:
            curves[run.name] = curve
    if not curves:
        raise ValueError("none of the runs has a held-out evaluation to compare")
    out.mkdir(parents=True, exist_ok=True)
    images = plot_overlays(curves, out)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in comparison_rows(curves)
    )
    figs = "".join(
        f'<figure><img src="{html.escape(f)}" alt="{html.escape(f)}"><figcaption>'
        f"{html.escape(f)}</figcaption></figure>"
        for f in images
    )
    note = (
        f"<p>Without evaluations, left out: {html.escape(', '.join(missing))}.</p>"
        if missing
        else ""
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>GPO runs compared</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}figure{{margin:1.5em 0}}img{{max-width:100%}}</style>
</head><body>
<h1>GPO runs compared: {html.escape(", ".join(curves))}</h1>
<table id="runs"><tr>{head}</tr>{body}</table>
{note}
{figs}
</body></html>
"""
    path = out / "compare.html"
    path.write_text(page)
    return path
