"""`gpo bench scaling`'s figures: trials summarised into rows per actor count, where the
curve flattens, the table and its reading (ops/bench/scaling.py runs the trials)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ops.harness import markdown_table


@dataclass(frozen=True, slots=True)
class Trial:
    """One window with `actors` actor processes."""

    actors: int
    repeat: int
    seconds: float
    """Length of the measured window."""
    trajectories: int
    tokens: int
    """Completion tokens of those trajectories."""
    startup: float
    """Seconds from starting the processes until every actor had published."""
    load: float = float("nan")
    """1-minute load average of the machine at the end of the window."""
    cpu_seconds: float = float("nan")
    """CPU time (user + system) the actor processes used during the window."""

    @property
    def trajectories_per_s(self) -> float:
        return self.trajectories / self.seconds

    @property
    def cores(self) -> float:
        """Cores the actors kept busy on average during the window."""
        return self.cpu_seconds / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass(frozen=True, slots=True)
class Row:
    actors: int
    trajectories_per_s: float
    """Median over repeats."""
    tokens_per_s: float
    """Median over repeats."""
    speedup: float
    """Median over repeats of trajectories/s against the baseline count in the same repeat."""
    efficiency: float
    """speedup / (actors / baseline actors)."""
    per_repeat: list[float]
    """Trajectories/s of each repeat."""
    cores: float = float("nan")
    """Median over repeats of the cores the actors kept busy."""
    per_cpu_second: float = float("nan")
    """Median over repeats of trajectories per actor CPU second."""


def summarise(trials: Sequence[Trial], counts: Sequence[int]) -> list[Row]:
    """One row per actor count; `counts[0]` is the baseline of the speed-ups."""
    by = {(t.actors, t.repeat): t for t in trials}
    repeats = sorted({t.repeat for t in trials})
    base = counts[0]
    rows = []
    for n in counts:
        mine = [by[n, r] for r in repeats]
        speedups = [by[n, r].trajectories_per_s / by[base, r].trajectories_per_s for r in repeats]
        speedup = statistics.median(speedups)
        rows.append(
            Row(
                actors=n,
                trajectories_per_s=statistics.median(t.trajectories_per_s for t in mine),
                tokens_per_s=statistics.median(t.tokens_per_s for t in mine),
                speedup=speedup,
                efficiency=speedup / (n / base),
                per_repeat=[t.trajectories_per_s for t in mine],
                cores=statistics.median(t.cores for t in mine),
                per_cpu_second=statistics.median(t.trajectories / t.cpu_seconds for t in mine),
            )
        )
    return rows


def marginal(a: Row, b: Row) -> float:
    """Throughput gained from `a` to `b` (by their paired speed-ups) relative to the actors
    added: 1.0 when the added actors produce as much as the ones already there, 0 when they
    add nothing."""
    return (b.speedup / a.speedup - 1) / (b.actors / a.actors - 1)


def flattens_at(rows: Sequence[Row], floor: float = 0.5) -> int | None:
    """The actor count after which the added actors return less than `floor` of their share
    (`marginal`); None when every step of the list returns more."""
    for a, b in zip(rows, rows[1:]):
        if marginal(a, b) < floor:
            return a.actors
    return None


def format_table(rows: Sequence[Row]) -> str:
    """Markdown table of the rows; speed-ups against the first row's actor count."""
    header = ["actors", "trajectories/s", "tokens/s", f"speed-up vs {rows[0].actors}"]
    header += ["efficiency", "trajectories/s per repeat", "cores busy (actors)"]
    header += ["trajectories per actor CPU s"]
    return markdown_table(
        header,
        [
            [
                r.actors,
                f"{r.trajectories_per_s:.1f}",
                f"{r.tokens_per_s:.0f}",
                f"{r.speedup:.2f}x",
                f"{100 * r.efficiency:.0f}%",
                ", ".join(f"{x:.1f}" for x in r.per_repeat),
                f"{r.cores:.2f}",
                f"{r.per_cpu_second:.1f}",
            ]
            for r in rows
        ],
    )


def reading(rows: Sequence[Row], trials: Sequence[Trial]) -> str:
    cores = os.cpu_count()
    flat = flattens_at(rows)
    steps = "; ".join(
        f"{a.actors} -> {b.actors} actors x{b.speedup / a.speedup:.2f} "
        f"(the added actors return {100 * marginal(a, b):.0f}% of their share)"
        for a, b in zip(rows, rows[1:])
    )
    where = (
        f"the curve flattens after {flat} actor(s)"
        if flat is not None
        else "the curve has not flattened within these counts"
    )
    first, last = rows[0], rows[-1]
    loads = [t.load for t in trials]
    startup = statistics.median(t.startup for t in trials)
    cpu = first.per_cpu_second / last.per_cpu_second - 1
    return (
        f"Throughput: {steps}. On this {cores}-core machine {where} (added actors returning "
        f"less than half their share); efficiency at {last.actors} actors is "
        f"{100 * last.efficiency:.0f}%. Each actor decodes with one torch thread, so at most "
        f"{cores} run at once. The machine was shared (load average "
        f"{min(loads):.1f}-{max(loads):.1f} during the windows), and more actor processes take "
        "a larger share of contended cores from other work: the actors kept "
        f"{first.cores:.2f} cores busy with {first.actors} and {last.cores:.2f} with "
        f"{last.actors}, so the speed-up follows the CPU share they got. Per actor CPU second "
        f"they produced {first.per_cpu_second:.0f} trajectories with {first.actors} and "
        f"{last.per_cpu_second:.0f} with {last.actors} (CPU per trajectory "
        f"{100 * cpu:+.0f}%); on an idle machine the curve is expected to flatten where the "
        f"actors' busy cores reach {cores}. An actor took {startup:.0f} s (median) from start "
        "to its first published batch, outside the measured window."
    )
