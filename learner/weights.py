"""Where the learner's adapter versions go: the run's weights stream (protocol/adapters.py).

The loop sees only `newest()` and `publish()`, so its unit tests can hand it an in-memory
channel instead of Redis (tests/unit/learner/test_loop.py)."""

from __future__ import annotations

from protocol.adapters import AdapterFollower, AdapterMetrics, AdapterPointer, AdapterPublisher
from protocol.streams import Keys, Link


class WeightsChannel:
    """The weights stream of one run, as the learner writes it."""

    def __init__(self, link: Link, keys: Keys, base_id: str, keep: int, metrics: AdapterMetrics):
        self.link, self.keys = link, keys
        self.publisher = AdapterPublisher(link, keys, base_id, keep=keep, metrics=metrics)

    async def newest(self) -> int:
        """The newest version on the stream (0: none), whoever published it."""
        pointer = await AdapterFollower(self.link, self.keys).poll()
        return pointer.version if pointer else 0

    async def publish(self, version: int, blob: bytes, lora: dict) -> AdapterPointer:
        """Write the adapter's changed chunks, then its pointer; keep the newest `keep`
        versions."""
        return await self.publisher.publish(version, blob, lora)
