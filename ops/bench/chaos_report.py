"""The chaos soak's outcome and its report: the markdown of RESULTS.md section 7 and the
JSON summary tests assert on (`gpo bench chaos`, ops/bench/chaos.py)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ops.bench.chaos_audit import MemoryTrace
from ops.bench.chaos_faults import KINDS
from ops.harness import machine_line, markdown_table
from ops.ledger import Ledger
from protocol.streams import SAMPLES


@dataclass
class Outcome:
    command: str
    run_dir: Path
    faults: list[dict]
    restarts: dict[str, int]
    exit_codes: dict[str, int | None]
    drain: str
    resumed: bool
    """The learner trained after the last fault."""
    ledger: Ledger | None
    accuracy: tuple[float | None, float | None, int]
    memory: MemoryTrace = dataclasses.field(default_factory=MemoryTrace)
    aborted: str = ""

    @property
    def unforced_restarts(self) -> dict[str, int]:
        """Restarts of each worker beyond the kills the soak dealt it (crashes: OOM, bugs)."""
        kills = Counter(f["target"] for f in self.faults if f["kind"].startswith("kill-"))
        return {w: n - kills[w] for w, n in self.restarts.items() if n > kills[w]}

    @property
    def failures(self) -> list[str]:
        out = [f"aborted: {self.aborted}"] if self.aborted else []
        if not self.resumed:
            out.append("training did not resume after the faults")
        if self.unforced_restarts:
            out.append(f"restarts beyond the kills: {self.unforced_restarts}")
        if not self.memory.plateaued:
            out.append("Redis memory did not plateau")
        return out + (self.ledger.failures if self.ledger else ["no ledger"])


def render(o: Outcome) -> str:
    """The report as markdown: command, machine, faults, the ledger, accuracy, verdict."""
    done = Counter(f["kind"] for f in o.faults if not f["note"])
    skipped = Counter(f["kind"] for f in o.faults if f["note"])
    faults = markdown_table(
        ["fault", "applied", "skipped (target already down)"],
        [[k, done[k], skipped[k]] for k in KINDS],
    )
    learner_kills = [f for f in o.faults if f["kind"] == "kill-learner" and not f["note"]]
    window = sum(bool(f.get("uncommitted")) for f in learner_kills)
    restarts = ", ".join(f"{k} {v}" for k, v in o.restarts.items())
    unforced = ", ".join(f"{k} {v}" for k, v in o.unforced_restarts.items()) or "none"
    mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    m = o.memory
    cap = f"maxmemory {mib(m.maxmemory)} MiB" if m.maxmemory else "no maxmemory"
    memory = (
        f"Redis memory ({cap}, streams trimmed every `redis.trim_interval`): peak used per "
        f"quarter of the run {' / '.join(mib(q) for q in m.quarters()) or '-'} MiB; writes "
        f"refused at maxmemory (OOM, waited out by the writers): {m.oom_refusals}; "
        f"plateaued: {'yes' if m.plateaued else 'no'}."
    )
    codes = ", ".join(f"{k} {v}" for k, v in o.exit_codes.items())
    base, last, n = o.accuracy
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    improved = base is not None and last is not None and last > base
    return "\n\n".join(
        [
            f"Command: `{o.command}`",
            f"Machine: {machine_line()}",
            faults,
            f"Learner kills between a publish and its commit (an update out that the restart "
            f"rolls back): {window} of {len(learner_kills)}.",
            f"Supervisor restarts: {restarts} (beyond the kills: {unforced}). Drain after the "
            f"faults: {o.drain or 'complete'}. Exit codes at the final SIGTERM: {codes}.",
            memory,
            ledger_tables(o.ledger) if o.ledger else "No ledger (Redis was not up at the end).",
            f"Held-out pass@1: base policy (step 0) {fmt(base)}, mean of the last {n} "
            f"evaluations {fmt(last)}: {'improved' if improved else 'not improved'}.",
            f"Verdict: {'PASS' if not o.failures else 'FAIL: ' + '; '.join(o.failures)}.",
        ]
    )


def summary(o: Outcome) -> dict:
    """The figures as JSON (runs/<id>/chaos.json): what tests assert on."""
    led = o.ledger
    return {
        "faults": o.faults,
        "restarts": o.restarts,
        "exit_codes": o.exit_codes,
        "drain": o.drain,
        "resumed": o.resumed,
        "aborted": o.aborted,
        "failures": o.failures,
        "accuracy": dict(zip(("base", "last", "n_last"), o.accuracy, strict=True)),
        "unforced_restarts": o.unforced_restarts,
        "memory": {
            "maxmemory": o.memory.maxmemory,
            "quarters": o.memory.quarters(),
            "oom_refusals": o.memory.oom_refusals,
            "plateaued": o.memory.plateaued,
        },
        "ledger": None
        if led is None
        else {
            "hops": {s: dataclasses.asdict(h) for s, h in led.hops.items()},
            "trained": led.trained,
            "lost": led.lost,
            "trained_twice": led.trained_twice,
            "dead_poison": led.dead_poison,
            "unexpected_dead": led.unexpected_dead,
            "poison_injected": led.poison_injected,
            "poison_in_flight": led.poison_in_flight,
            "poison_missing": led.poison_missing,
            "checkpoint_agrees": led.checkpoint_agrees,
        },
    }


def ledger_tables(led: Ledger) -> str:
    """The totals, then what became of the ids of each stream."""
    hops = led.hops
    yes_no = lambda ok: "yes" if ok else "NO"  # noqa: E731
    lost = ", ".join(i for h in hops.values() for i in h.lost[:5])
    totals = markdown_table(
        ["ledger", ""],
        [
            ["produced", ", ".join(f"{s} {h.produced}" for s, h in hops.items())],
            ["trained (sample ids in the final weights)", led.trained],
            ["lost", f"{led.lost} ({lost} ...)" if led.lost else 0],
            ["trained twice", len(led.trained_twice)],
            [
                "dropped stale: more updates behind than max_policy_lag (by lag)",
                f"{hops[SAMPLES].stale} ({led.stale_reason()})" if hops[SAMPLES].stale else 0,
            ],
            ["dropped surplus resets (batch composition)", hops[SAMPLES].surplus],
            ["in flight at the stop", sum(h.in_flight for h in hops.values())],
            ["dead-lettered", led.dead_poison + len(led.unexpected_dead)],
            ["... all of them injected poison", yes_no(not led.unexpected_dead)],
            [
                "poison injected: dead-lettered / in flight / vanished",
                f"{led.poison_injected}: {led.dead_poison} / {led.poison_in_flight} / "
                f"{len(led.poison_missing)}",
            ],
            [
                "final checkpoint's trained ids agree with the run log",
                yes_no(led.checkpoint_agrees),
            ],
        ],
    )
    header = ["stream (ids)", "produced", "passed on", "in flight", "dead", "stale"]
    header += ["surplus", "lost"]
    rows = [
        [s, h.produced, h.passed, h.in_flight, h.dead, h.stale, h.surplus, len(h.lost)]
        for s, h in hops.items()
    ]
    note = (
        "Passed on: a prompt's or reset's trajectories exist, a trajectory's sample exists, "
        "a sample is trained. Unexpected dead entries: "
        + ("; ".join(led.unexpected_dead[:5]) or "none")
        + "."
    )
    return f"{totals}\n\n{markdown_table(header, rows)}\n\n{note}"
