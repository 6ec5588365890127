"""Which incoming samples may be trained: duplicates and stale samples are dropped, and a
sample longer than the learner can train is refused (the loop dead-letters it alone).

Delivery is at-least-once, so the same sample id can arrive twice (a redelivery after a
crash, an estimator that redid a trajectory, a zombie's late output). `TrainedIds` keeps
every id the policy has trained on, split into `committed` (inside the latest checkpoint)
and `uncommitted` (trained since): only the committed part is saved, because a crash rolls
the policy back to the checkpoint and those uncommitted samples must then be trained again.

Bounded by the staleness rule: a sample generated at step s of the lineage
(`learner.lineage`: the step its policy version holds) is only admitted while the policy is
at most max_policy_lag steps past s, so once it is past that, no sample of step s can be
trained again whether or not its id is remembered (it is dropped as stale). Each id keeps
its sample's step and `prune(floor)` forgets those below the floor at every commit; the set
then holds about (max_policy_lag + 2) steps' samples, however long the run. A restart sets
the step back to its checkpoint's, whose set was pruned at that same step, so the bound
holds across restarts. Ids are strings, not ordered counters, so a per-producer watermark
would not do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from learner.lineage import NO_RESTARTS, Lineage
from protocol.messages import Sample


@dataclass
class TrainedIds:
    """Ids trained on, committed (checkpointed) or not, each with its sample's lineage step."""

    committed: dict[str, int] = field(default_factory=dict)
    uncommitted: dict[str, int] = field(default_factory=dict)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.committed or sample_id in self.uncommitted

    def add(self, samples: Iterable[Sample], lineage: Lineage = NO_RESTARTS) -> None:
        self.uncommitted.update((s.id, lineage.step_of(s.policy_version)) for s in samples)

    def commit(self) -> None:
        """The checkpoint that holds the uncommitted ids was written."""
        self.committed.update(self.uncommitted)
        self.uncommitted = {}

    def prune(self, floor: int) -> int:
        """Forget ids of samples older than step `floor` (see `dedup_floor`); returns how
        many were forgotten."""
        old = [i for i, v in self.committed.items() if v < floor]
        for i in old:
            del self.committed[i]
        return len(old)

    def all(self) -> dict[str, int]:
        """Every id held, committed or not: what a checkpoint written now must contain."""
        return {**self.committed, **self.uncommitted}


def dedup_floor(step: int, max_lag: int) -> int:
    """Oldest lineage step whose samples `admit` can still keep at policy `step`, less one:
    the newest update's samples (admitted at step - 1) all stay in the set, so a checkpoint
    always holds its last update's ids."""
    return step - max_lag - 1


@dataclass(frozen=True, slots=True)
class Admission:
    """Indices into the offered samples, by verdict."""

    keep: list[int]
    duplicate: list[int]
    """Trained already, or offered earlier (in the buffer, or earlier in this same list)."""
    stale: list[int]
    """Generated more than `max_lag` steps before `step` (along the lineage)."""
    too_long: list[int] = field(default_factory=list)
    """More tokens than `max_tokens`: no update could hold it."""
    lags: list[int] = field(default_factory=list)
    """Policy lag (`Lineage.lag`) of each kept sample."""


def admit(
    samples: Sequence[Sample],
    trained: TrainedIds,
    buffered: set[str],
    step: int,
    max_lag: int,
    max_tokens: int = 0,
    lineage: Lineage = NO_RESTARTS,
) -> Admission:
    """Sort offered samples into keep / duplicate / stale / too long (in that precedence),
    at policy `step`; `max_tokens` 0 sets no length cap."""
    keep, dup, stale, long, lags = [], [], [], [], []
    seen = set(buffered)
    for i, s in enumerate(samples):
        lag = lineage.lag(step, s.policy_version)
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
