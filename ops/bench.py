"""`python -m ops.bench <name>`: the project's benchmarks (also `gpo bench <name>`).

Each benchmark compares side by side in one run and prints ratios; timings on a shared
machine are noisy, so read the ratios, and rerun before trusting a small difference.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "transport": (
        "ops.bench_transport",
        "stream client vs raw redis-py and redis-benchmark; adapter fetch",
    ),
    "broadcast": (
        "ops.bench_broadcast",
        "adapter publish + fetch latency vs size and readers, against a memory copy",
    ),
    "engine": ("ops.bench_engine", "transformers engine vs model.generate; prefix reuse"),
    "learner": (
        "ops.bench_learner",
        "learner update tokens/s vs a bare forward+backward of the same batch",
    ),
    "critical-step": (
        "ops.bench_critical",
        "critical-step accuracy and MC rollouts: uniform K vs adaptive",
    ),
    "gpo-overhead": (
        "ops.bench_gpo_overhead",
        "generation seconds and tokens per trained sample: GPO variants vs plain PPO",
    ),
    "scaling": (
        "ops.bench_scaling",
        "trajectories/s and tokens/s with 1, 2, 4 gpo-actor processes on one Redis",
    ),
    "chaos": (
        "ops.bench_chaos",
        "soak under random kills, Redis pauses and restarts, poison; then lost/twice/dead",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print("usage: gpo bench <name> [options]   (python -m ops.bench <name>)\n\nbenchmarks:")
        for name, (_, doc) in BENCHMARKS.items():
            print(f"  {name:<15}{doc}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown benchmark {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(BENCHMARKS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
