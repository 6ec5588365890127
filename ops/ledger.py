"""The ledger of a finished run: what became of every message id, hop by hop.

Read from Redis after every worker stopped (`dump_stream`) and from the learner's run log
(with `learner.log_sample_ids`), then accounted by pure functions. One message id may have
several entries: producers repeat work after a crash under the same deterministic ids. An
id of a work stream is
- *passed on* when its output exists downstream: a prompt's `n` trajectories `<id>/<j>`
  (`n` = actor.rollout.n), a reset request's `n` trajectories, a trajectory's sample (same
  id), a sample's training: it is in the final weights, i.e. in an `update` record of the
  run log that no later `resume` voided and at or below the final checkpoint's step;
- else *in flight* when one of its entries is still pending in the stream's group, or not yet
  delivered: nothing has decided about it yet;
- else *dead-lettered* when one of its entries went to `<stream>:dead`;
- else *dropped stale* (samples only) when the run log has it in a `stale` record: samples
  generated more than `max_policy_lag` updates back (counted along the lineage of the
  weights, learner/lineage.py, so a learner restart ages none) are dropped and acked by
  design (learner/loop.py), as they only get staler; the record gives each one's lag, and
  the ledger counts them by lag (`stale_lags`);
- else *dropped surplus* (samples only) when the run log has it in a `surplus` record: reset
  samples the batch composition had no room for (learner/composition.py);
- else **lost**: it was consumed and acknowledged, and nothing came of it.
*Trained twice*: a sample id in more than one update of the final weights; *trained unknown*:
a trained id that no entry of `samples` carries. A dead-letter entry is *expected* only when
it carries the marker of injected poison.

`read_ledger` reads it all from a Redis and a learner's directory; `gpo bench chaos` and the
system fault tests (tests/support/pipeline.py) keep these books.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from redis.exceptions import ResponseError

from protocol.codec import ProtocolError, decode
from protocol.consumer import FIELD
from protocol.messages import Prompt, ResetRequest, Sample, Trajectory
from protocol.streams import (
    GROUPS,
    PROMPTS,
    RESETS,
    SAMPLES,
    TRAJECTORIES,
    WORK_STREAMS,
    Keys,
    is_nogroup,
)

KINDS = {PROMPTS: Prompt, RESETS: ResetRequest, TRAJECTORIES: Trajectory, SAMPLES: Sample}
"""The message type of each work stream."""


@dataclass
class StreamDump:
    """A work stream as Redis holds it at the end of the run."""

    entries: list[tuple[str, bytes]]
    """(entry id, encoded message), oldest first."""
    pending: set[str]
    """Entry ids delivered to the stream's group and not acknowledged."""
    last_delivered: str
    """The group's last-delivered id (entries after it were never read)."""
    dead: list[dict]
    """Entries of `<stream>:dead`: raw, reason, source_id (the entry id in the stream)."""

    def in_flight(self, entry_id: str) -> bool:
        return entry_id in self.pending or id_order(entry_id) > id_order(self.last_delivered)


def pending_entries(r, keys: Keys) -> dict[str, set[str]]:
    """Entry ids pending in each work stream's group."""
    return {s: _pending(r, keys.stream(s), GROUPS[s]) for s in WORK_STREAMS}


def _pending(r, key: str, group: str) -> set[str]:
    out: set[str] = set()
    start = "-"
    while True:
        try:
            page = r.xpending_range(key, group, min=start, max="+", count=1000)
        except ResponseError as e:
            if is_nogroup(e):  # the stream or its group does not exist (yet)
                return out
            raise
        out |= {p["message_id"].decode() for p in page}
        if len(page) < 1000:
            return out
        start = "(" + page[-1]["message_id"].decode()


def _xrange(r, key: str) -> list[tuple[str, dict]]:
    out, start = [], "-"
    while True:
        page = r.xrange(key, min=start, max="+", count=1000)
        out += [(eid.decode(), fields) for eid, fields in page]
        if len(page) < 1000:
            return out
        start = "(" + page[-1][0].decode()


def dump_stream(r, keys: Keys, stream: str) -> StreamDump:
    key = keys.stream(stream)
    groups = {g["name"].decode(): g for g in r.xinfo_groups(key)} if r.exists(key) else {}
    group = groups.get(GROUPS[stream])
    dead = [
        {k.decode(): v for k, v in fields.items()} for _, fields in _xrange(r, keys.dead(stream))
    ]
    return StreamDump(
        entries=[(eid, fields.get(FIELD, b"")) for eid, fields in _xrange(r, key)],
        pending=_pending(r, key, GROUPS[stream]),
        last_delivered=group["last-delivered-id"].decode() if group else "0-0",
        dead=[
            {**d, "source_id": d["source_id"].decode(), "reason": d["reason"].decode()}
            for d in dead
        ],
    )


def read_runlog(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_checkpoint(learner_dir: Path) -> tuple[int, set[str]]:
    """Step and trained ids of the newest checkpoint (0 and nothing when there is none)."""
    latest = learner_dir / "latest"
    if not latest.is_file():
        return 0, set()
    state = json.loads((learner_dir / latest.read_text().strip() / "state.json").read_text())
    return int(state["step"]), set(state["trained_ids"])  # a list or {id: version}: its ids


def read_ledger(
    r,
    keys: Keys,
    learner_dir: Path,
    n_rollouts: int,
    injected: set[str] = frozenset(),
    marker: re.Pattern[bytes] | None = None,
    merge: Callable[[str, StreamDump], StreamDump] | None = None,
) -> tuple[Ledger, list[dict]]:
    """The ledger of a run whose workers stopped, and its run log: the work streams as `r`
    holds them (each passed through `merge`, if given: entries trimmed away put back), the
    learner's run log and final checkpoint in `learner_dir`."""
    dumps = {s: dump_stream(r, keys, s) for s in WORK_STREAMS}
    if merge is not None:
        dumps = {s: merge(s, dump) for s, dump in dumps.items()}
    records = read_runlog(learner_dir / "run_log.jsonl")
    checkpoint = final_checkpoint(learner_dir)
    return make_ledger(dumps, records, checkpoint, n_rollouts, injected, marker), records


# ---------------------------------------------------------------- the ledger (pure)


def surviving_updates(records: list[dict], final_step: int | None = None) -> list[dict]:
    """The update records the final weights contain: a `resume` at step S voids the updates
    past S (they never reached a checkpoint), and so does the end (`final_step`: the final
    checkpoint's; None: a learner still running, every update so far counts)."""
    updates: list[dict] = []
    for rec in records:
        if rec["event"] == "resume":
            updates = [u for u in updates if u["step"] <= rec["step"]]
        elif rec["event"] == "update":
            updates.append(rec)
    return [u for u in updates if final_step is None or u["step"] <= final_step]


def trained_history(records: list[dict], final_step: int | None = None) -> Counter:
    """Sample ids of the updates the final weights contain, counted."""
    return Counter(i for u in surviving_updates(records, final_step) for i in u["sample_ids"])


def repeated(counts: Counter) -> dict[str, int]:
    """The ids counted more than once, with their counts."""
    return {k: n for k, n in counts.items() if n > 1}


def checkpoint_agrees(records: list[dict], checkpoint: tuple[int, set[str]]) -> bool:
    """The final checkpoint's trained ids are run-log ids, and hold all of its last update's
    (older ones age out of the learner's dedup set: `learner.dedup`)."""
    updates = surviving_updates(records, checkpoint[0])
    trained = {i for u in updates for i in u["sample_ids"]}
    last = set(updates[-1]["sample_ids"]) if updates else set()
    return checkpoint[1] <= trained and last <= checkpoint[1]


@dataclass
class Hop:
    """What became of the distinct message ids of one work stream."""

    produced: int = 0
    passed: int = 0
    in_flight: int = 0
    dead: int = 0
    stale: int = 0
    surplus: int = 0
    lost: list[str] = field(default_factory=list)


@dataclass
class Ledger:
    hops: dict[str, Hop]
    trained: int
    """Distinct sample ids in the final weights."""
    trained_twice: dict[str, int]
    dead_poison: int
    unexpected_dead: list[str]
    """`<stream>: <reason>` of each dead-letter entry that is not injected poison."""
    poison_injected: int
    poison_in_flight: int
    poison_missing: list[str]
    """Injected poison markers neither dead-lettered nor in flight."""
    checkpoint_agrees: bool
    """The final checkpoint's trained ids are the run log's (`checkpoint_agrees`)."""
    trained_ids: Counter = field(default_factory=Counter)
    """Sample ids in the final weights, each with the number of updates that trained it."""
    trained_unknown: set[str] = field(default_factory=set)
    """Trained ids that no entry of `samples` carries."""
    dead_sources: dict[str, list[str]] = field(default_factory=dict)
    """Per work stream with dead letters, the entry ids they came from."""
    stale_lags: dict[int, int] = field(default_factory=dict)
    """Why samples were dropped stale: {lag in updates: samples}, from the `stale` records
    (each past the learner's `max_policy_lag`)."""
    max_lag: int | None = None
    """The learner's `max_policy_lag`, as its `stale` records state it."""

    def stale_reason(self) -> str:
        """'lag 5: 3, lag 6: 1 (max 4)', or '' when nothing was dropped stale."""
        if not self.stale_lags:
            return ""
        lags = ", ".join(f"lag {lag}: {n}" for lag, n in sorted(self.stale_lags.items()))
        return f"{lags} (max {self.max_lag})"

    @property
    def lost(self) -> int:
        return sum(len(h.lost) for h in self.hops.values())

    @property
    def failures(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{self.lost} lost")
        if self.trained_twice:
            out.append(f"{len(self.trained_twice)} trained twice")
        if self.trained_unknown:
            out.append(f"{len(self.trained_unknown)} trained ids no sample carries")
        if self.unexpected_dead:
            out.append(f"{len(self.unexpected_dead)} dead-letter entries are not injected poison")
        if self.poison_missing:
            out.append(f"{len(self.poison_missing)} injected poison entries vanished")
        if not self.checkpoint_agrees:
            out.append("the final checkpoint's trained ids disagree with the run log's")
        return out


def make_ledger(
    dumps: dict[str, StreamDump],
    records: list[dict],
    checkpoint: tuple[int, set[str]],
    n_rollouts: int,
    injected: set[str] = frozenset(),
    marker: re.Pattern[bytes] | None = None,
) -> Ledger:
    """Account for every id of every work stream (see the module doc). `injected`: the
    markers of the poison written into the streams; `marker` finds one in an entry's bytes
    (None: no poison was marked, every dead letter is unexpected)."""
    history = trained_history(records, checkpoint[0])
    stale_records = [rec for rec in records if rec["event"] == "stale"]
    stale = {i for rec in stale_records for i in rec["sample_ids"]}
    surplus = {i for rec in records if rec["event"] == "surplus" for i in rec["sample_ids"]}
    hops = account(dumps, history, stale, n_rollouts, surplus)
    dead, unexpected = set(), []
    for stream, dump in dumps.items():
        for d in dump.dead:
            if marker and (m := marker.search(d["raw"])):
                dead.add(m.group().decode())
            else:
                unexpected.append(f"{stream}: {d['reason'][:200]}")
    in_flight = {
        m.group().decode()
        for dump in dumps.values()
        for eid, raw in dump.entries
        if marker and dump.in_flight(eid) and (m := marker.search(raw))
    }
    return Ledger(
        hops=hops,
        trained=len(history),
        trained_twice=repeated(history),
        dead_poison=len(dead),
        unexpected_dead=unexpected,
        poison_injected=len(injected),
        poison_in_flight=len(in_flight),
        poison_missing=sorted(injected - dead - in_flight),
        checkpoint_agrees=checkpoint_agrees(records, checkpoint),
        trained_ids=history,
        trained_unknown=set(history) - set(by_id(dumps[SAMPLES], SAMPLES)),
        dead_sources={
            stream: [d["source_id"] for d in dump.dead]
            for stream, dump in dumps.items()
            if dump.dead
        },
        stale_lags=dict(Counter(lag for rec in stale_records for lag in rec.get("lags", []))),
        max_lag=next((rec["max_lag"] for rec in stale_records if "max_lag" in rec), None),
    )


def account(
    dumps: dict[str, StreamDump],
    history: Counter,
    stale: set[str],
    n_rollouts: int,
    surplus: set[str] = frozenset(),
) -> dict[str, Hop]:
    """Each stream's decodable ids: passed on, else in flight, else dead, else stale, else
    surplus, else lost."""
    messages = {stream: by_id(dump, stream) for stream, dump in dumps.items()}
    trajectories, samples = set(messages[TRAJECTORIES]), set(messages[SAMPLES])

    def passed(stream: str, mid: str, msg) -> bool:
        if stream in (PROMPTS, RESETS):
            n = n_rollouts if stream == PROMPTS else msg.n
            return all(f"{mid}/{j}" in trajectories for j in range(n))
        return mid in (samples if stream == TRAJECTORIES else history)

    hops = {}
    for stream, ids in messages.items():
        dump, hop = dumps[stream], Hop(produced=len(ids))
        dead_sources = {d["source_id"] for d in dump.dead}
        for mid, entries in ids.items():
            if passed(stream, mid, entries[0][1]):
                hop.passed += 1
            elif any(dump.in_flight(eid) for eid, _ in entries):
                hop.in_flight += 1
            elif any(eid in dead_sources for eid, _ in entries):
                hop.dead += 1
            elif stream == SAMPLES and mid in stale:
                hop.stale += 1
            elif stream == SAMPLES and mid in surplus:
                hop.surplus += 1
            else:
                hop.lost.append(mid)
        hops[stream] = hop
    return hops


def by_id(dump: StreamDump, stream: str) -> dict[str, list]:
    """The stream's entries that decode to its own message type, grouped by message id:
    {id: [(entry id, message)]}. Undecodable entries and messages of another type (both
    dead-lettered by the consumer, `decode:` / `wrong_type:`) are poison: dead-lettered or
    in flight, accounted apart."""
    out: dict[str, list] = {}
    for eid, raw in dump.entries:
        try:
            msg = decode(raw)
        except ProtocolError:
            continue
        if isinstance(msg, KINDS[stream]):
            out.setdefault(msg.id, []).append((eid, msg))
    return out


def accuracy(records: list[dict], last: int = 3) -> tuple[float | None, float | None, int]:
    """Held-out pass@1 of the base policy (the step-0 evaluation), the mean of the last
    `last` evaluations after it, and how many evaluations that mean covers."""
    evals = [(r["step"], r["pass_at_1"]) for r in records if r["event"] == "eval"]
    base = next((p for step, p in evals if step == 0), None)
    later = [p for step, p in evals if step > 0][-last:]
    return base, (sum(later) / len(later) if later else None), len(later)


def id_order(eid: str) -> tuple[int, int]:
    """A stream entry id as a sortable (milliseconds, sequence) pair."""
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)
