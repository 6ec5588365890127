"""One bad sample costs one sample: a learner that dies training a batch bisects it.

A sample can kill the learner every time it is trained (a kernel that segfaults on it, an
out-of-memory kill, an exception). Left alone, the restarted learner trains the same
samples again, dies again, and after `max_deliveries` deaths the transport dead-letters
every sample it held. Instead:

- before each update the learner writes the batch's stream entry ids to `inflight.json` in
  the checkpoint dir (atomically, fsynced), and removes the file once the update returns;
- a start that finds a batch marked in training knows the previous incarnation died
  training it. Its samples become **suspects** (`Suspects`), and the learner takes them
  back first, by entry id (`Consumer.take_back`), ahead of whatever else it held. While
  there are suspects, it trains only *isolation* batches of suspects, at most half as many
  as died (`isolation_size`). An isolation batch that trains clears its suspects (the file then
  keeps the rest, so a stop between updates loses no suspicion); one that dies becomes the
  next, smaller suspect set;
- the one suspect left after two deaths or more is the culprit (`Suspects.culprit`): it is
  dead-lettered, alone, and the samples that died beside it are trained.

A kill from outside during an update (an operator, an OOM kill of a healthy batch) looks the
same as a crash, so it costs an innocent batch a bisection: smaller updates, never a sample.

Isolating one sample from a batch of B takes `deaths_to_isolate(B)` = ceil(log2 B) + 1
deaths, and every death redelivers each held sample once more; the learner's consumer
therefore allows that many deliveries on top of `redis.max_deliveries`
(`delivery_allowance`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Suspects:
    """The samples of a batch the learner died training, and how far the bisection is."""

    ids: frozenset[str] = frozenset()
    """Stream entry ids of the suspect samples (pending in Redis until trained)."""
    deaths: int = 0
    """Deaths of this bisection so far (the batch whose death started it counts 1)."""
    origin: int = 0
    """Size of the batch whose death started the bisection."""

    @classmethod
    def from_marker(cls, marker: dict | None) -> Suspects:
        """The suspects a start finds in `inflight.json` (None: no file). A batch still
        marked `training` died with the process: it becomes the suspect set, one death
        more; without one, the suspects left when the process stopped between updates."""
        if not marker:
            return cls()
        deaths, origin = int(marker.get("deaths", 0)), int(marker.get("origin", 0))
        if training := [str(i) for i in marker.get("training") or []]:
            return cls(frozenset(training), deaths + 1, origin or len(training))
        ids = frozenset(str(i) for i in marker.get("suspects") or [])
        return cls(ids, deaths, origin) if ids else cls()

    def marker(self, training: Sequence[str] | None) -> dict:
        """What `inflight.json` holds: the suspects, and the batch in training (if any)."""
        return {
            "suspects": sorted(self.ids),
            "deaths": self.deaths,
            "origin": self.origin,
            "training": list(training or []),
        }

    @property
    def culprit(self) -> str | None:
        """The entry found guilty: the one suspect left after two deaths or more (it was in
        every batch that died; the others trained). A lone first death may have been a kill
        from outside: that suspect is retried once."""
        if len(self.ids) == 1 and self.deaths >= 2:
            return next(iter(self.ids))
        return None

    def cleared(self, ids: Iterable[str]) -> Suspects:
        """Without `ids` (trained, dead-lettered, or dropped as duplicate or stale)."""
        left = self.ids - set(ids)
        return Suspects(left, self.deaths, self.origin) if left else Suspects()


def isolation_size(suspects: Suspects) -> int:
    """How many suspects the next isolation batch trains: half (rounded up) of the set that
    died, one when one is left."""
    return (len(suspects.ids) + 1) // 2


def isolation_batch(suspects: Suspects, buffered: Sequence[str]) -> list[int]:
    """Indices of the buffered samples (by entry id, oldest first) that train next as an
    isolation batch: the first `isolation_size` buffered suspects. (Every suspect still
    pending is buffered: they are taken back first; the others are gone and cleared.)"""
    held = [i for i, eid in enumerate(buffered) if eid in suspects.ids]
    return held[: isolation_size(suspects)]


def deaths_to_isolate(batch_size: int) -> int:
    """Deaths a bisection takes, at most, to isolate one sample of a batch of `batch_size`."""
    return math.ceil(math.log2(max(batch_size, 1))) + 1


def delivery_allowance(largest_batch: int) -> int:
    """Deliveries the learner's consumer allows on top of `redis.max_deliveries`."""
    return deaths_to_isolate(largest_batch)
