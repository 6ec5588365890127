"""The chaos soak's pure parts: the fault schedule, the poison, and the ledger's definitions
(ops/ledger.py) on hand-made stream contents."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.bench.chaos_audit import MemoryTrace
from ops.bench.chaos_faults import KINDS, POISON_RE, plan_faults, poison_payload
from ops.bench.chaos_report import Outcome
from ops.ledger import StreamDump, accuracy, checkpoint_agrees, make_ledger, trained_history
from protocol.codec import ProtocolError, decode, encode
from protocol.messages import Trajectory
from protocol.streams import PROMPTS, RESETS, SAMPLES, TRAJECTORIES
from tests.support.learner import make_sample
from tests.support.workload import prompt

WORKERS = ["learner", "actor-0", "actor-1", "estimator-0"]


def test_plan_is_seeded_bounded_and_deals_every_kind():
    plan = plan_faults(7, 600, 20, WORKERS)
    assert plan == plan_faults(7, 600, 20, WORKERS)
    assert plan != plan_faults(8, 600, 20, WORKERS)
    assert len(plan) == 30
    times = [f.at for f in plan]
    assert times == sorted(times) and times[0] >= 0 and times[-1] < 600
    for deck in range(0, 30, 6):
        assert sorted(f.kind for f in plan[deck : deck + 6]) == sorted(KINDS)
    for f in plan:
        if f.kind in ("kill-actor", "kill-estimator", "kill-learner"):
            assert f.target in WORKERS and f.target.startswith(f.kind.removeprefix("kill-"))
        elif f.kind == "pause-redis":
            assert 2 <= f.seconds <= 8
        elif f.kind == "kill-redis":
            assert 0 <= f.seconds <= 5
        else:
            assert f.target in (PROMPTS, RESETS, TRAJECTORIES, SAMPLES) and 1 <= f.count <= 5
    # a short soak still gets one fault of each kind
    assert sorted(f.kind for f in plan_faults(1, 120, 30, WORKERS)) == sorted(KINDS)


@pytest.mark.parametrize("number", [0, 1, 2])
def test_poison_never_decodes_and_carries_its_marker(number):
    raw = poison_payload(SAMPLES, number)
    with pytest.raises(ProtocolError):
        decode(raw)
    assert POISON_RE.search(raw).group().decode() == f"gpo-chaos-poison:samples:{number}"


def traj(tid: str, prompt_id: str) -> Trajectory:
    return Trajectory(
        id=tid,
        run="t",
        ts=0.0,
        prompt_id=prompt_id,
        task="test",
        answer="0",
        kind="fresh",
        parent_id=None,
        reset_step=None,
        reset_value=None,
        prompt_len=1,
        prefix_token_ids=[1],
        completion_token_ids=[2, 3],
        logprobs=[-0.1, -0.2],
        step_spans=[(0, 2)],
        reward=1.0,
        policy_version=0,
        actor="a",
        gen_seconds=0.1,
    )


def dump(entries, pending=(), last="9-0", dead=()) -> StreamDump:
    """Entries get ids 1-0, 2-0, ...; everything up to `last` was delivered."""
    return StreamDump(
        entries=[(f"{i + 1}-0", raw) for i, raw in enumerate(entries)],
        pending=set(pending),
        last_delivered=last,
        dead=[{"source_id": s, "raw": raw, "reason": reason} for s, raw, reason in dead],
    )


def test_ledger_sorts_every_id_into_exactly_one_outcome():
    p = [encode(prompt(i)) for i in range(4)]
    poison = [poison_payload(PROMPTS, 0), poison_payload(SAMPLES, 0)]
    dumps = {
        # p0 passed on; p1 acked with one of its two trajectories missing: lost;
        # p2 pending; p3 never delivered (after last-delivered 3-0), nor the poison after it
        PROMPTS: dump([*p, poison[0]], pending=["3-0"], last="3-0"),
        RESETS: dump([]),
        # p0/0, p0/1 have samples; p1/0 was dead-lettered (not poison: unexpected)
        TRAJECTORIES: dump(
            [encode(traj(t, t[:2])) for t in ("p0/0", "p0/1", "p1/0")],
            dead=[("3-0", encode(traj("p1/0", "p1")), "max_deliveries: 6")],
        ),
        # p0/0 trained; p0/1 twice in the stream (a repeat): dropped stale; poison dead
        SAMPLES: dump(
            [encode(make_sample("p0/0")), encode(make_sample("p0/1")), encode(make_sample("p0/1"))]
            + [poison[1]],
            dead=[("4-0", poison[1], "decode:bad_msgpack: x")],
        ),
    }
    records = [
        {"event": "update", "step": 1, "sample_ids": ["p0/0"]},
        {
            "event": "stale",
            "step": 6,
            "max_lag": 4,
            "sample_ids": ["p0/1"],
            "versions": [1],
            "lags": [5],
        },
    ]
    injected = {"gpo-chaos-poison:prompts:0", "gpo-chaos-poison:samples:0", "gpo-chaos-poison:x:9"}
    led = make_ledger(dumps, records, (1, {"p0/0"}), 2, injected, POISON_RE)
    h = led.hops
    assert (h[PROMPTS].produced, h[PROMPTS].passed, h[PROMPTS].in_flight) == (4, 1, 2)
    assert h[PROMPTS].lost == ["p1"]
    assert (h[TRAJECTORIES].passed, h[TRAJECTORIES].dead, h[TRAJECTORIES].lost) == (2, 1, [])
    assert (h[SAMPLES].produced, h[SAMPLES].passed, h[SAMPLES].stale) == (2, 1, 1)
    assert led.lost == 1 and led.trained == 1 and led.trained_twice == {}
    assert led.unexpected_dead == ["trajectories: max_deliveries: 6"]
    assert (led.dead_poison, led.poison_in_flight) == (1, 1)
    assert led.poison_missing == ["gpo-chaos-poison:x:9"] and led.checkpoint_agrees
    assert len(led.failures) == 3  # lost, unexpected dead, vanished poison
    assert led.stale_lags == {5: 1} and led.stale_reason() == "lag 5: 1 (max 4)"
    assert led.dead_sources == {TRAJECTORIES: ["3-0"], SAMPLES: ["4-0"]}
    assert led.trained_ids == {"p0/0": 1} and led.trained_unknown == set()


def test_a_trained_id_no_sample_carries_fails_and_without_a_marker_every_dead_is_unexpected():
    dumps = {
        PROMPTS: dump([]),
        RESETS: dump([encode(prompt(7))]),  # a message of another stream's type: poison too
        TRAJECTORIES: dump([]),
        SAMPLES: dump(
            [encode(make_sample("a")), poison_payload(SAMPLES, 0)],
            dead=[("2-0", poison_payload(SAMPLES, 0), "decode:bad_msgpack: x")],
        ),
    }
    records = [{"event": "update", "step": 1, "sample_ids": ["a", "ghost"]}]
    led = make_ledger(dumps, records, (1, {"a", "ghost"}), 2)
    assert led.trained_unknown == {"ghost"} and led.trained == 2
    assert led.hops[RESETS].produced == 0 and led.lost == 0
    assert led.unexpected_dead == ["samples: decode:bad_msgpack: x"] and led.dead_poison == 0
    assert led.failures == [
        "1 trained ids no sample carries",
        "1 dead-letter entries are not injected poison",
    ]


def test_trained_history_keeps_only_what_the_final_weights_hold():
    records = [
        {"event": "update", "step": 1, "sample_ids": ["a", "b"]},
        {"event": "update", "step": 2, "sample_ids": ["c"]},  # never checkpointed ...
        {"event": "resume", "step": 1},  # ... so the restart voids it
        {"event": "update", "step": 2, "sample_ids": ["c", "d"]},
        {"event": "update", "step": 3, "sample_ids": ["a"]},  # trained twice
        {"event": "update", "step": 4, "sample_ids": ["e"]},  # past the final checkpoint
    ]
    assert trained_history(records, final_step=3) == {"a": 2, "b": 1, "c": 1, "d": 1}


def test_accuracy_is_base_against_the_last_evaluations():
    records = [{"event": "eval", "step": s, "pass_at_1": p} for s, p in [(0, 0.3), (10, 0.2)]]
    records += [{"event": "eval", "step": s, "pass_at_1": 0.4} for s in (20, 30, 40)]
    assert accuracy(records) == (0.3, pytest.approx(0.4), 3)
    assert accuracy([]) == (None, None, 0)


def test_checkpoint_agrees_when_old_ids_aged_out_but_not_otherwise():
    records = [
        {"event": "update", "step": 1, "sample_ids": ["a", "b"]},
        {"event": "update", "step": 2, "sample_ids": ["c"]},
    ]
    assert checkpoint_agrees(records, (2, {"a", "b", "c"}))
    assert checkpoint_agrees(records, (2, {"c"}))  # a and b aged out of the dedup set
    assert not checkpoint_agrees(records, (2, {"a", "b"}))  # the last update's id is missing
    assert not checkpoint_agrees(records, (2, {"c", "zz"}))  # an id the log never trained


def test_memory_plateau_is_judged_on_the_fault_phase_by_quarter_peaks():
    mib = 2**20
    flat = MemoryTrace([(t, 10 * mib + (t % 3) * mib // 4) for t in range(0, 100)], since=20)
    assert flat.quarters() == [10 * mib + mib // 2] * 4 and flat.plateaued
    # the warm-up's growth (before `since`) is not judged
    warm = MemoryTrace([(t, t * mib) for t in range(20)] + flat.samples[20:], since=20)
    assert warm.plateaued
    # growth of 6 MiB a minute, as untrimmed streams grow, is no plateau
    growing = MemoryTrace([(t, 10 * mib + t * mib // 10) for t in range(0, 600, 2)])
    q = growing.quarters()
    assert q == sorted(q) and q[3] - q[1] > 20 * mib and not growing.plateaued
    # within 10% + 4 MiB of the first half's peak
    edge = [(0, 100 * mib), (1, 90 * mib), (2, 90 * mib), (3, 114 * mib)]
    assert MemoryTrace(edge).plateaued
    assert not MemoryTrace(edge[:3] + [(3, 114 * mib + 1)]).plateaued
    assert not MemoryTrace(edge[:3]).plateaued  # too few samples to judge


def test_restarts_beyond_the_kills_are_crashes():
    faults = [
        {"kind": "kill-learner", "target": "learner"},
        {"kind": "kill-actor", "target": "actor-0"},
        {"kind": "kill-actor", "target": "actor-0"},
        {"kind": "pause-redis", "target": ""},
    ]
    o = Outcome("gpo bench chaos", Path("."), faults, {}, {}, "", True, None, (None, None, 0))
    o.restarts = {"learner": 1, "actor-0": 2, "estimator-0": 0}
    assert o.unforced_restarts == {}
    o.restarts = {"learner": 3, "actor-0": 2, "estimator-0": 1}
    assert o.unforced_restarts == {"learner": 2, "estimator-0": 1}
    assert any("restarts beyond the kills" in f for f in o.failures)
