"""One learner per run: a Redis key the running learner holds and renews.

Two learners of one run would both publish adapter versions and both ack samples: the
weights would fork and samples would be trained by one and lost to the other. So a learner
takes the key `gpo:<run>:learner` (SET NX with a TTL) before it reads or publishes anything,
renews it every third of the TTL, and deletes it on a clean exit. A second learner finds
the key held and waits at most one TTL for it (the wait a restart after a crash needs); if
the holder keeps renewing, it stops with a clear error (`UserError`, exit 2). A holder that
finds its key gone (Redis restarted, or paused past the TTL) takes it again; one that finds
another learner's token there has lost the run and stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from protocol.process import UserError
from protocol.streams import Keys, Link

log = logging.getLogger(__name__)

# KEYS: lease key. ARGV: token, ttl ms -> 1 renewed or taken again, 0 held by another
_RENEW_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

# KEYS: lease key. ARGV: token -> 1 deleted, 0 not ours
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseLost(RuntimeError):
    """Another learner holds the run now: this one must stop before it publishes again."""


class LearnerLease:
    """The run's learner key, held by this process."""

    def __init__(self, link: Link, keys: Keys, name: str, ttl: float):
        self.link, self.key, self.ttl = link, keys.learner_lease(), ttl
        self.token = f"{name}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @property
    def interval(self) -> float:
        """Seconds between renewals: three per TTL."""
        return self.ttl / 3

    async def acquire(self) -> None:
        """Take the key, waiting at most one TTL for a holder that stopped renewing."""
        deadline = time.monotonic() + self.ttl + self.interval
        told = False
        while True:
            taken = await self.link.call(
                lambda r: r.set(self.key, self.token, nx=True, px=int(self.ttl * 1000))
            )
            if taken:
                return
            holder = await self.link.call(lambda r: r.get(self.key))
            holder = holder.decode() if isinstance(holder, bytes) else holder
            if time.monotonic() > deadline:
                raise UserError(
                    f"another learner is running this run ({holder}); stop it first, or "
                    "give this one another --run-id"
                )
            if not told:
                log.warning(
                    "waiting up to %.0f s for the learner lease held by %s", self.ttl, holder
                )
                told = True
            await asyncio.sleep(min(self.interval, 1.0))

    async def renew(self) -> None:
        """Extend the TTL; raises LeaseLost when another learner holds the key."""
        ok = await self.link.call(
            lambda r: r.eval(_RENEW_LUA, 1, self.key, self.token, int(self.ttl * 1000))
        )
        if not ok:
            raise LeaseLost(f"another learner took over the run's lease ({self.key})")

    async def release(self) -> None:
        """Give the key up (a clean exit): the next learner need not wait for the TTL."""
        await self.link.call(lambda r: r.eval(_RELEASE_LUA, 1, self.key, self.token))
