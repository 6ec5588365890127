"""Metrics helpers: isolated registries, /metrics and /healthz, timed(), promtool-clean names."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from protocol.metrics import Metrics, TransportMetrics, timed


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_registry_per_process_and_http_endpoints():
    healthy = {"ok": True}
    a, b = Metrics("actor"), Metrics("learner")
    TransportMetrics(a), TransportMetrics(b)  # same families in two registries: no clash
    c = a.counter("things_total", "Things.", ("stream",))
    c.labels("prompts").inc(3)
    port = a.serve(0, host="127.0.0.1", healthy=lambda: healthy["ok"])
    try:
        code, body = get(port, "/metrics")
        assert code == 200
        assert 'gpo_actor_things_total{stream="prompts"} 3.0' in body
        assert "gpo_learner" not in body
        assert get(port, "/healthz") == (200, "ok\n")
        healthy["ok"] = False
        assert get(port, "/healthz")[0] == 503
        assert get(port, "/nope")[0] == 404
    finally:
        a.close()


def test_timed_observes_seconds_even_on_error():
    m = Metrics("t")
    h = m.histogram("phase_seconds", "A phase.")
    with timed(h) as watch:
        time.sleep(0.02)
    assert watch.seconds >= 0.02
    with pytest.raises(ZeroDivisionError), timed(h) as failed:
        1 / 0  # noqa: B018
    assert 0 <= failed.seconds < watch.seconds
    text = m.render().decode()
    assert "gpo_t_phase_seconds_count 2.0" in text
    with timed() as alone:  # no histogram: the stopwatch only
        time.sleep(0.01)
    assert alone.seconds >= 0.01 and "gpo_t_phase_seconds_count 2.0" in m.render().decode()
    total = float(
        next(
            line for line in text.splitlines() if line.startswith("gpo_t_phase_seconds_sum")
        ).split()[1]
    )
    assert 0.02 <= total < 1.0


def test_promtool_check_metrics_is_clean():
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install Debian's prometheus (make test does when root)"
    m = Metrics("actor")
    tm = TransportMetrics(m)
    tm.processed.labels("prompts").inc()
    tm.dead_lettered.labels("prompts", "decode:truncated").inc()
    tm.backlog.labels("prompts").set(4)
    m.histogram("generate_seconds", "Generation time.").observe(0.3)
    m.info("adapter", "Loaded adapter.").info({"version": "3", "sha256": "abcdef012345"})
    out = subprocess.run(
        [promtool, "check", "metrics"], input=m.render(), capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    assert out.stdout.decode().strip() == "" and out.stderr.decode().strip() == "", out
