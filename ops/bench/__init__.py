"""`python -m ops.bench <name>`: the project's benchmarks (also `gpo bench <name>`).

Each benchmark compares side by side in one run and prints ratios; timings on a shared
machine are noisy, so read the ratios, and rerun before trusting a small difference.
"""

from __future__ import annotations

import sys

from ops.cli import dispatch

BENCHMARKS = {
    "transport": (
        "ops.bench.transport",
        "stream client vs raw redis-py and redis-benchmark; adapter fetch",
    ),
    "broadcast": (
        "ops.bench.broadcast",
        "adapter publish + fetch latency vs size and readers, against a memory copy",
    ),
    "adapter-bytes": (
        "ops.bench.adapter_bytes",
        "bytes per adapter version: fp32 vs bf16, chunks unchanged since the last skipped",
    ),
    "engine": ("ops.bench.engine", "transformers engine vs model.generate; prefix reuse"),
    "learner": (
        "ops.bench.learner_update",
        "learner update tokens/s vs a bare forward+backward of the same batch",
    ),
    "critical-step": (
        "ops.bench.critical",
        "critical-step accuracy and MC rollouts: uniform K vs adaptive",
    ),
    "gpo-overhead": (
        "ops.bench.gpo_overhead",
        "generation seconds and tokens per trained sample: GPO variants vs plain PPO",
    ),
    "scaling": (
        "ops.bench.scaling",
        "trajectories/s and tokens/s with 1, 2, 4 gpo-actor processes on one Redis",
    ),
    "capacity": (
        "ops.bench.capacity",
        "Redis cost per message of each stream, the capacity model, a 64-actor simulated check",
    ),
    "chaos": (
        "ops.bench.chaos",
        "soak under random kills, Redis pauses and restarts, poison; then lost/twice/dead",
    ),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(
        "gpo bench", BENCHMARKS, sys.argv[1:] if argv is None else list(argv), "benchmarks"
    )
