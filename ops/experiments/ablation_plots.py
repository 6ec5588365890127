"""The ablation's plots: each arm's mean curve over seeds with its min-max band, against
learner updates and against training time, for a study (one pair of axes) or a map (a
column per cell). The tables beside them are in `ablation_report`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ops.harness import PLOTS

if TYPE_CHECKING:
    from ops.experiments.ablation_report import Curve, Study


def plot_study(
    name: str, study: Study, runs: dict[tuple[str, int], Curve], seeds: list[int]
) -> str:
    """Mean curve over seeds with the min-max band, against updates and against time."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _plot_arms(axes, study.arms, runs, seeds)
    axes[0].legend()
    fig.suptitle(f"ablation: {study.title} (mean over {len(seeds)} seeds, band = min-max)")
    return _save(plt, fig, name)


def plot_map(
    name: str, study: Study, cells: dict[str, dict[tuple[str, int], Curve]], seeds: list[int]
) -> str:
    """One column per cell (its runs keyed by arm and seed): its arms' mean curves with
    min-max bands, against updates (top) and against time (bottom)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(cells), figsize=(4 * len(cells), 7), squeeze=False)
    for col, (cell, runs) in enumerate(cells.items()):
        _plot_arms(axes[:, col], study.arms, runs, seeds)
        axes[0, col].set_title(cell)
    axes[0, 0].legend()
    fig.suptitle(f"ablation: {study.title} (mean over seeds {seeds}, band = min-max)")
    return _save(plt, fig, name)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_arms(
    axes, arms: tuple[tuple[str, str], ...], runs: dict[tuple[str, int], Curve], seeds: list[int]
) -> None:
    """Each arm's mean over seeds and min-max band on (updates, seconds) axes."""
    for arm, label in arms:
        cs = [runs[(arm, s)] for s in seeds if (arm, s) in runs]
        if not cs:
            continue
        for ax, key in zip(axes, ("steps", "seconds"), strict=True):
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


def _save(plt, fig, name: str) -> str:
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    path = PLOTS / f"ablation-{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
