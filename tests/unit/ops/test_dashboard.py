"""Every metric family a gpo process exports has a panel on the Grafana dashboard, and the
shipped JSON is the generated one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from actors.actor import ActorMetrics
from actors.estimator import EstimatorMetrics
from actors.weights import WeightsSync
from learner.telemetry import LearnerMetrics
from ops.dashboard import PANELS, dashboard
from protocol.adapters import AdapterMetrics
from protocol.metrics import Metrics, TransportMetrics
from protocol.streams import Keys

ROOT = Path(__file__).resolve().parents[3]


class _Engine:
    policy_version = 0


def families(process: str) -> set[str]:
    m = Metrics(process)
    TransportMetrics(m)
    if process == "learner":
        LearnerMetrics(m)
        AdapterMetrics(m)
    else:
        WeightsSync(None, Keys("t"), _Engine(), m)  # also builds the adapter metrics
        (ActorMetrics if process == "actor" else EstimatorMetrics)(m)
    return {f.name for f in m.registry.collect()}


def covered(family: str, exprs: list[str]) -> bool:
    names = {family, *(f"{family}_{s}" for s in ("total", "bucket", "info", "sum", "count"))}
    for e in exprs:
        if any(re.search(rf"\b{re.escape(n)}\b", e) for n in names):
            return True
        for pattern in re.findall(r"__name__=~'([^']+)'", e):
            if any(re.fullmatch(pattern, n) for n in names):
                return True
    return False


@pytest.mark.parametrize("process", ["actor", "estimator", "learner"])
def test_every_metric_family_has_a_panel(process):
    exprs = [e for _, es, _ in PANELS for e in es]
    missing = sorted(f for f in families(process) if not covered(f, exprs))
    assert not missing, f"no dashboard panel for {missing}"


def test_shipped_dashboard_is_generated():
    shipped = json.loads((ROOT / "ops" / "grafana" / "gpo-dashboard.json").read_text())
    assert shipped == dashboard(), (
        "regenerate: python -m ops.dashboard > ops/grafana/gpo-dashboard.json"
    )
    assert len(shipped["panels"]) == len(PANELS) and len(
        {p["id"] for p in shipped["panels"]}
    ) == len(PANELS)
