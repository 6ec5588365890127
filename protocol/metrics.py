"""Prometheus metrics: one isolated registry per process, `/metrics` and `/healthz`, `timed()`.

Names follow DESIGN.md section 7: `gpo_<process>_<what>_<unit>`, base units, `_total` for
counters, few labels (a stream name, a reason; never a message id). The registry is private
to the `Metrics` object, so tests can run several "processes" in one interpreter.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Seconds buckets wide enough for a Redis call (ms) and a generate call (minutes).
SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """The metric families of one process, named `gpo_<process>_...`."""

    def __init__(self, process: str):
        self.process = process
        self.registry = CollectorRegistry(auto_describe=True)
        self._server: ThreadingHTTPServer | None = None

    def name(self, what: str) -> str:
        return f"gpo_{self.process}_{what}"

    def counter(self, what: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        """`what` ends in `_total` by convention; prometheus_client strips and re-adds it."""
        return Counter(self.name(what), doc, labels, registry=self.registry)

    def gauge(self, what: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(self.name(what), doc, labels, registry=self.registry)

    def histogram(
        self, what: str, doc: str, labels: tuple[str, ...] = (), buckets=SECONDS_BUCKETS
    ) -> Histogram:
        return Histogram(self.name(what), doc, labels, registry=self.registry, buckets=buckets)

    def info(self, what: str, doc: str) -> Info:
        return Info(self.name(what), doc, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, host: str, healthy: Callable[[], bool] = lambda: True) -> int:
        """Serve `/metrics` and `/healthz` on `host` (`[metrics] host`) from a daemon thread;
        returns the bound port."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = healthy()
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n", "text/plain")
                else:
                    self._reply(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes every few seconds: keep logs quiet
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        ).start()
        return self._server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass
class Stopwatch:
    """What `timed` measured: the block's wall time, set when the block ends."""

    seconds: float = 0.0


@contextlib.contextmanager
def timed(histogram: Histogram | None = None) -> Iterator[Stopwatch]:
    """Time a loop phase: the block's wall time goes to the yielded `Stopwatch` and, when
    given, is observed in `histogram` (seconds), also when the block raises. Every process
    loop times its phases with it."""
    watch = Stopwatch()
    start = time.perf_counter()
    try:
        yield watch
    finally:
        watch.seconds = time.perf_counter() - start
        if histogram is not None:
            histogram.observe(watch.seconds)


class TransportMetrics:
    """What every stream client counts, labelled by stream name (without the run prefix)."""

    def __init__(self, m: Metrics):
        self.processed = m.counter(
            "messages_processed_total", "Messages handled and acknowledged.", ("stream",)
        )
        self.redelivered = m.counter(
            "messages_redelivered_total",
            "Messages received again (own pending list or claimed).",
            ("stream",),
        )
        self.dead_lettered = m.counter(
            "messages_dead_lettered_total",
            "Messages moved to the dead-letter stream.",
            ("stream", "reason"),
        )
        self.handler_errors = m.counter(
            "handler_errors_total",
            "Messages whose handler raised; left pending for a retry.",
            ("stream",),
        )
        self.lease_lost = m.counter(
            "lease_lost_total",
            "Acks refused because another consumer took the message over.",
            ("stream",),
        )
        self.produced = m.counter(
            "messages_produced_total", "Messages written to a stream.", ("stream",)
        )
        self.backlog = m.gauge(
            "stream_backlog_messages", "Produced minus acknowledged, as last seen.", ("stream",)
        )
        self.backpressure_seconds = m.counter(
            "backpressure_wait_seconds_total",
            "Time producers waited for the backlog to drain.",
            ("stream",),
        )
        self.reconnects = m.counter(
            "redis_reconnects_total", "Reconnections after a lost Redis connection."
        )
        self.oom_waits = m.counter(
            "redis_oom_waits_total",
            "Redis calls refused at maxmemory (OOM), each retried after a backoff.",
        )
        self.trimmed = m.counter(
            "stream_trimmed_total",
            "Entries deleted from a consumed stream once every group had acknowledged them.",
            ("stream",),
        )
        self.group_resets = m.counter(
            "group_resets_total",
            "Consumer groups recreated after NOGROUP (Redis lost its data).",
            ("stream",),
        )
