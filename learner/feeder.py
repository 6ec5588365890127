"""The prompt feeder: keeps the `prompts` backlog at a target, never past its bound.

Prompts go out epoch by epoch over the task's training split, each epoch in its own seeded
order (`epoch_order`), with ids `train:<epoch>:<index>` (index = position in that epoch's
order), so the same prompt in the same epoch always gets the same id: after a crash the
feeder resumes from the checkpointed cursor and re-sends the same ids, and everything
downstream deduplicates on them.

Backlog = produced - acked, as the transport counts it (`Producer.backlog`). One `top_up`
sends `target - backlog` prompts when the backlog is below the target; since target <= bound
and only the feeder writes the stream, the backlog never passes the bound.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from actors.tasks.base import TaskPrompt
from protocol.messages import Prompt
from protocol.producer import Producer
from protocol.streams import PROMPTS


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n), fixed by (seed, epoch)."""
    order = list(range(n))
    random.Random(f"feeder:{seed}:{epoch}").shuffle(order)
    return order


class Feeder:
    """Sends training prompts; `epoch` and `index` are its cursor (saved in checkpoints)."""

    def __init__(
        self,
        producer: Producer,
        prompts: Sequence[TaskPrompt],
        encode_text,
        task_name: str,
        run_id: str,
        target: int,
        bound: int,
        seed: int,
        epoch: int = 0,
        index: int = 0,
    ):
        if not prompts:
            raise ValueError("the task has no training prompts")
        self.producer, self.prompts, self.encode_text = producer, prompts, encode_text
        self.task_name, self.run_id = task_name, run_id
        self.target, self.bound, self.seed = target, bound, seed
        self.epoch, self.index = epoch, index
        self._order = epoch_order(len(prompts), seed, epoch)

    def next_prompts(self, n: int) -> list[Prompt]:
        """The next `n` prompts, advancing the cursor across epochs."""
        out = []
        for _ in range(n):
            if self.index >= len(self.prompts):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = epoch_order(len(self.prompts), self.seed, self.epoch)
            p = self.prompts[self._order[self.index]]
            out.append(
                Prompt(
                    id=f"train:{self.epoch}:{self.index}",
                    run=self.run_id,
                    ts=time.time(),
                    task=self.task_name,
                    text=p.text,
                    token_ids=self.encode_text(p.text),
                    answer=p.answer,
                    epoch=self.epoch,
                )
            )
            self.index += 1
        return out

    async def top_up(self) -> int:
        """Bring the backlog up to the target; returns how many prompts were sent."""
        backlog = await self.producer.backlog(PROMPTS)
        n = min(self.target, self.bound) - backlog
        if n <= 0:
            return 0
        await self.producer.send(PROMPTS, self.next_prompts(n), wait=False)
        return n
