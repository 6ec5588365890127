"""`gpo experiment <name>`: the project's experiments (also `python -m ops.experiment <name>`).

An experiment runs the system several times (arms x seeds), reads back its own logs, and
writes its tables and plots into docs/RESULTS.md and docs/results/ (see `ops.results`);
`--report-only` rebuilds them from the logs of an earlier run without training again.
"""

from __future__ import annotations

import importlib
import sys

EXPERIMENTS = {
    "ablation": (
        "ops.experiment_ablation",
        "selection none/random/advantage, advantage modes, MC budgets: seeds, curves, spread",
    ),
    "offline": (
        "ops.experiment_offline",
        "offline DPO on critical-step pairs vs whole-trajectory pairs, seeds, held-out pass@1",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in EXPERIMENTS:
        print("usage: gpo experiment <name> [options]\n\nexperiments:")
        for name, (_, doc) in EXPERIMENTS.items():
            print(f"  {name:<12}{doc}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown experiment {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(EXPERIMENTS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
