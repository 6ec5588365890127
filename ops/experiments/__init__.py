"""`gpo experiment <name>`: the project's experiments (also `python -m ops.experiments <name>`).

An experiment runs the system several times (arms x seeds), reads back its own logs, and
writes its tables and plots into docs/RESULTS.md and docs/results/ (see `ops.harness`);
`--report-only` rebuilds them from the logs of an earlier run without training again.
"""

from __future__ import annotations

import sys

from ops.cli import dispatch

EXPERIMENTS = {
    "ablation": (
        "ops.experiments.ablation",
        "selection none/random/advantage, advantage modes, MC budgets: seeds, curves, spread",
    ),
    "offline": (
        "ops.experiments.offline",
        "offline DPO on critical-step pairs vs whole-trajectory pairs, seeds, held-out pass@1",
    ),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(
        "gpo experiment", EXPERIMENTS, sys.argv[1:] if argv is None else list(argv), "experiments"
    )
