"""Follow the `weights` stream and load each new adapter into the engine at a safe point.

Actors and estimators call `sync()` between batches: it fetches the newest published version
(verified by size and sha256; a rejected version is counted and skipped, the engine keeps
its adapter), through the host cache unless `fetch.host_cache = "off"` (one fetch per
machine: `protocol.adapter_cache`), loads it, and updates the version gauge and the info
metric that carries the sha256 prefix, so a dashboard shows that the rollout policy really
changed. `lag()` is the
number of versions the engine trails the newest pointer seen.
"""

from __future__ import annotations

import logging
import time

from actors.engines.base import Engine
from protocol.adapter_cache import HostCache
from protocol.adapters import (
    AdapterFollower,
    AdapterMetrics,
    AdapterRejected,
    FetchConfig,
    fetch_adapter,
)
from protocol.messages import AdapterPointer
from protocol.metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_FETCH = FetchConfig()


class WeightsSync:
    """Keeps one engine on the newest verified adapter."""

    def __init__(
        self, link, keys, engine: Engine, metrics: Metrics, fetch: FetchConfig = DEFAULT_FETCH
    ):
        self.link, self.engine, self.fetch = link, engine, fetch
        self.follower = AdapterFollower(link, keys)
        self.adapter_metrics = AdapterMetrics(metrics)
        self.cache = (
            HostCache.for_run(fetch.host_cache, link.cfg.url, keys.run_id) if link else None
        )
        self.newest_seen = 0
        self.version = metrics.gauge(
            "policy_version", "Adapter version new requests run under (0 = base)."
        )
        self.lag_gauge = metrics.gauge(
            "policy_lag_versions", "Versions the engine trails the newest published."
        )
        self.info = metrics.info("adapter", "The loaded adapter: version and sha256 prefix.")
        self.load_seconds = metrics.histogram(
            "adapter_load_seconds", "Fetch, verify and load one adapter."
        )
        self.info.info({"version": "0", "sha256": "base"})

    def lag(self) -> int:
        return max(0, self.newest_seen - self.engine.policy_version)

    async def sync(self) -> bool:
        """Load the newest adapter if there is a newer one; True if the engine changed."""
        pointer = await self.follower.poll()
        if pointer is not None:
            self.newest_seen = max(self.newest_seen, pointer.version)
        changed = False
        if pointer is not None and pointer.version > self.engine.policy_version:
            changed = await self._load(pointer)
        self.lag_gauge.set(self.lag())
        return changed

    async def _load(self, pointer: AdapterPointer) -> bool:
        start = time.perf_counter()
        try:
            adapter = await fetch_adapter(
                self.link,
                pointer,
                concurrency=self.fetch.concurrency,
                chunks_per_call=self.fetch.chunks_per_call,
                cache=self.cache,
                metrics=self.adapter_metrics,
            )
            await self.engine.load_adapter(
                pointer.version, pointer.lora_config, adapter.safetensors_bytes
            )
        except AdapterRejected as e:
            log.error(
                "adapter version %d rejected (%s); staying on version %d",
                pointer.version,
                e,
                self.engine.policy_version,
            )
            return False
        except ValueError as e:  # the engine refused it (shape, modules, rank)
            self.adapter_metrics.rejected.labels("engine_refused").inc()
            log.error("engine refused adapter version %d: %s", pointer.version, e)
            return False
        self.load_seconds.observe(time.perf_counter() - start)
        self.version.set(pointer.version)
        self.info.info({"version": str(pointer.version), "sha256": pointer.sha256[:12]})
        log.info("loaded adapter version %d (sha256 %s)", pointer.version, pointer.sha256[:12])
        return True
