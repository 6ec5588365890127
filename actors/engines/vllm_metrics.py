"""vLLM's own Prometheus series (`vllm:*`) on the process's `/metrics`, beside `gpo_*`.

vLLM records its stats (queue, KV cache use, prefix-cache queries and hits, latencies) in
prometheus_client's process-global default registry, or in the multiprocess files under
`PROMETHEUS_MULTIPROC_DIR` when that is set. `VllmCollector` re-exports those families
through the process's private registry, plus one derived gauge: the prefix-cache hit ratio
since the engine started (Grafana can also take `rate(vllm:prefix_cache_hits_total[5m]) /
rate(vllm:prefix_cache_queries_total[5m])`). One vLLM engine per process, so the series are
this engine's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

PREFIX = "vllm:"


class VllmCollector:
    """A prometheus_client collector yielding the `vllm:*` families of this process."""

    def __init__(self, hit_ratio_name: str) -> None:
        self.hit_ratio_name = hit_ratio_name
        """Name of the derived prefix-cache hit ratio gauge (`gpo_<process>_...`)."""

    def describe(self) -> list[Metric]:
        # Nothing up front: vLLM creates its families when the engine starts, and an empty
        # description keeps the registry from checking them against the project's names.
        return []

    def collect(self) -> Iterator[Metric]:
        totals = {"vllm:prefix_cache_hits": 0.0, "vllm:prefix_cache_queries": 0.0}
        for family in _source().collect():
            if not family.name.startswith(PREFIX):
                continue
            if family.name in totals:
                totals[family.name] = sum(
                    s.value for s in family.samples if s.name.endswith("_total")
                )
            yield family
        ratio = GaugeMetricFamily(
            self.hit_ratio_name,
            "Prefix-cache hits over queries (tokens) since the vLLM engine started.",
        )
        queries = totals["vllm:prefix_cache_queries"]
        ratio.add_metric([], totals["vllm:prefix_cache_hits"] / queries if queries else 0.0)
        yield ratio


def _source() -> CollectorRegistry:
    """Where vLLM keeps its series in this process (see the module docstring)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
        return registry
    return REGISTRY
