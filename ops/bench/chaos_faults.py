"""The chaos soak's faults: their kinds, the seeded schedule, and the poison payloads
(`gpo bench chaos`, ops/bench/chaos.py)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import msgpack

from protocol.streams import WORK_STREAMS

KINDS = ("kill-actor", "kill-estimator", "kill-learner", "pause-redis", "kill-redis", "poison")
POISON = b"gpo-chaos-poison:"
POISON_RE = re.compile(rb"gpo-chaos-poison:[a-z]+:\d+")


@dataclass(frozen=True)
class ChaosConfig:
    """The soak's shape (flags of `gpo bench chaos`)."""

    minutes: float = 10.0
    """Length of the fault phase, in minutes."""
    seed: int = 0
    """Seed of the fault schedule: times, kinds, targets, durations, poison streams."""
    mean_gap: float = 20.0
    """Mean seconds between two faults."""
    warmup_minutes: float = 15.0
    """Longest wait for the learner's first update before the faults start."""
    drain_minutes: float = 5.0
    """Longest wait after the faults for the system to catch up before it is stopped."""
    progress_seconds: float = 30.0
    """Seconds between progress lines."""


@dataclass(frozen=True)
class Fault:
    """One scheduled fault."""

    at: float
    """Seconds after the fault phase began."""
    kind: str
    """One of KINDS."""
    target: str = ""
    """kill-actor/estimator/learner: the worker's name; poison: the work stream."""
    seconds: float = 0.0
    """pause-redis: how long Redis stays stopped; kill-redis: how long it stays down."""
    count: int = 0
    """poison: how many malformed entries."""


def plan_faults(seed: int, seconds: float, mean_gap: float, workers: list[str]) -> list[Fault]:
    """The fault schedule: one fault in each of max(6, seconds // mean_gap) equal slots, at a
    random point of its first 80 %, kinds dealt from decks of all six kinds shuffled."""
    rng = random.Random(f"chaos:{seed}")
    slots = max(len(KINDS), int(seconds // mean_gap))
    width = seconds / slots
    deck: list[str] = []
    out = []
    for i in range(slots):
        if not deck:
            deck = list(KINDS)
            rng.shuffle(deck)
        kind = deck.pop()
        at = round((i + rng.uniform(0.0, 0.8)) * width, 1)
        if kind.startswith("kill-") and kind != "kill-redis":
            role = kind.removeprefix("kill-")
            out.append(Fault(at, kind, rng.choice([w for w in workers if w.startswith(role)])))
        elif kind == "pause-redis":
            out.append(Fault(at, kind, seconds=round(rng.uniform(2.0, 8.0), 1)))
        elif kind == "kill-redis":
            out.append(Fault(at, kind, seconds=round(rng.uniform(0.0, 5.0), 1)))
        else:
            out.append(Fault(at, kind, rng.choice(WORK_STREAMS), count=rng.randint(1, 5)))
    return out


def poison_payload(stream: str, number: int) -> bytes:
    """Malformed bytes carrying the marker `gpo-chaos-poison:<stream>:<number>`, in one of
    three shapes: a byte msgpack never uses, a truncated map, an unknown schema version."""
    marker = f"{POISON.decode()}{stream}:{number}"
    shape = number % 3
    if shape == 0:
        return b"\xc1" + marker.encode()
    if shape == 1:
        return msgpack.packb({"v": 1, "type": "prompt", "id": marker, "text": "x" * 40})[:-7]
    return msgpack.packb({"v": 999, "type": "sample", "id": marker})
