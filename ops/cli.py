"""`gpo`: the umbrella command. Subcommands are small modules; this file only dispatches.

gpo bench transport|engine|critical-step|... [options]
gpo experiment ablation|offline [options]
gpo eval --model M [--adapter DIR]
gpo bootstrap [options]     build the tiny base policy (cached)
gpo offline pairs|train     offline GPO pairs and preference training
"""

from __future__ import annotations

import importlib
import sys

from protocol.config import ConfigError
from protocol.process import UserError

SUBCOMMANDS = {
    "launch": ("ops.launch", "run learner, actors and estimators on this machine, supervised"),
    "report": ("ops.report", "write runs/<id>/report.html with plots from a run directory"),
    "inspect": ("ops.inspect_run", "write runs/<id>/inspect.html: steps, values, critical step"),
    "bench": ("ops.bench", "run a benchmark and print side-by-side ratios"),
    "experiment": ("ops.experiment", "run an experiment (arms x seeds) into docs/RESULTS.md"),
    "eval": ("ops.evaluate", "held-out pass@1 of a base model, optionally with a LoRA adapter"),
    "offline": (
        "learner.offline",
        "offline GPO: critical-step preference pairs; DPO/KTO/SimPO/ORPO adapter training",
    ),
    "bootstrap": (
        "actors.bootstrap",
        "build (or reuse) the tiny base policy on the synthetic task",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: gpo <command> [options]\n\ncommands:")
        for name, (_, doc) in SUBCOMMANDS.items():
            print(f"  {name:<12}{doc}")
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"gpo: unknown command {argv[0]!r}; run `gpo --help`", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    if not hasattr(module, "main"):
        print(f"gpo {argv[0]}: not available in this build", file=sys.stderr)
        return 2
    try:
        return module.main(argv[1:])
    except (ConfigError, UserError) as e:  # a user's mistake, wherever it was found: one line
        words = argv[:2] if argv[0] in GROUPS and len(argv) > 1 else argv[:1]
        print(f"gpo {' '.join(words)}: error: {e}", file=sys.stderr)
        return 2


GROUPS = ("bench", "experiment", "offline")
"""Subcommands whose first argument names a command of their own."""


if __name__ == "__main__":
    raise SystemExit(main())
