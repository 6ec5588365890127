"""Which incoming samples may be trained: duplicates and stale samples are dropped, and a
sample longer than the learner can train is refused (the loop dead-letters it alone).

Delivery is at-least-once, so the same sample id can arrive twice (a redelivery after a
crash, an estimator that redid a trajectory, a zombie's late output). `TrainedIds` keeps
every id the policy has trained on, split into `committed` (inside the latest checkpoint)
and `uncommitted` (trained since): only the committed part is saved, because a crash rolls
the policy back to the checkpoint and those uncommitted samples must then be trained again.

A set, not a watermark: sample ids are deterministic strings, not ordered counters. Cost:
about 100 bytes per trained sample in memory and in `state.json`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from protocol.messages import Sample


@dataclass
class TrainedIds:
    """Ids trained on, committed (checkpointed) or not."""

    committed: set[str] = field(default_factory=set)
    uncommitted: set[str] = field(default_factory=set)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.committed or sample_id in self.uncommitted

    def add(self, ids: Iterable[str]) -> None:
        self.uncommitted.update(ids)

    def commit(self) -> None:
        """The checkpoint that holds the uncommitted ids was written."""
        self.committed |= self.uncommitted
        self.uncommitted = set()


@dataclass(frozen=True, slots=True)
class Admission:
    """Indices into the offered samples, by verdict."""

    keep: list[int]
    duplicate: list[int]
    """Trained already, or offered earlier (in the buffer, or earlier in this same list)."""
    stale: list[int]
    """Generated more than `max_lag` versions before `version`."""
    too_long: list[int] = field(default_factory=list)
    """More tokens than `max_tokens`: no update could hold it."""
    lags: list[int] = field(default_factory=list)
    """Policy lag (version - sample version, >= 0) of each kept sample."""


def admit(
    samples: Sequence[Sample],
    trained: TrainedIds,
    buffered: set[str],
    version: int,
    max_lag: int,
    max_tokens: int = 0,
) -> Admission:
    """Sort offered samples into keep / duplicate / stale / too long (in that precedence);
    `max_tokens` 0 sets no length cap."""
    keep, dup, stale, long, lags = [], [], [], [], []
    seen = set(buffered)
    for i, s in enumerate(samples):
        lag = max(0, version - s.policy_version)
        if s.id in trained or s.id in seen:
            dup.append(i)
        elif lag > max_lag:
            stale.append(i)
        elif max_tokens and len(s.token_ids) > max_tokens:
            long.append(i)
        else:
            keep.append(i)
            lags.append(lag)
            seen.add(s.id)
    return Admission(keep, dup, stale, long, lags)
