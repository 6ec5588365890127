"""`gpo`: the umbrella command. Subcommands are small modules; this file only dispatches.

gpo bench transport|engine|critical-step|... [options]
gpo experiment ablation|offline [options]
gpo eval --model M [--adapter DIR]
gpo bootstrap [options]     build the tiny base policy (cached)
gpo model import|smollm2    a GGUF model as a model directory (cached)
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
    "experiment": ("ops.experiments", "run an experiment (arms x seeds) into docs/RESULTS.md"),
    "eval": ("ops.heldout", "held-out pass@1 of a base model, optionally with a LoRA adapter"),
    "offline": (
        "learner.offline.cli",
        "offline GPO: critical-step preference pairs; DPO/KTO/SimPO/ORPO adapter training",
    ),
    "model": (
        "ops.model_import",
        "turn a GGUF file (or the packaged SmolLM2-135M-Instruct) into a model directory",
    ),
    "bootstrap": (
        "ops.tiny_policy.bootstrap",
        "build (or reuse) the tiny base policy on the synthetic task",
    ),
}


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str], kind: str) -> int:
    """Run the `main(argv[1:])` of the module `commands` names for `argv[0]`: one dispatcher
    for `gpo`, `gpo bench` and `gpo experiment`. No name or `-h`: the list, exit 0; an
    unknown name: the list and an error, exit 2."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: {prog} <name> [options]\n\n{kind}:")
        width = max(len(name) for name in commands) + 3
        for name, (_, doc) in commands.items():
            print(f"  {name:<{width}}{doc}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\n{prog}: error: unknown {kind[:-1]} {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(commands[argv[0]][0])
    if not hasattr(module, "main"):
        print(f"{prog} {argv[0]}: not available in this build", file=sys.stderr)
        return 2
    return module.main(argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return dispatch("gpo", SUBCOMMANDS, argv, "commands")
    except (ConfigError, UserError) as e:  # a user's mistake, wherever it was found: one line
        words = argv[:2] if argv[0] in GROUPS and len(argv) > 1 else argv[:1]
        print(f"gpo {' '.join(words)}: error: {e}", file=sys.stderr)
        return 2


GROUPS = ("bench", "experiment", "offline")
"""Subcommands whose first argument names a command of their own."""


if __name__ == "__main__":
    raise SystemExit(main())
