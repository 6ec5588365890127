"""Start gpo processes (`python -m <module>`) for integration tests and wait until ready.

`loop="asyncio"` runs a process without uvloop: `tests/support/no_uvloop` shadows the
package, so `run_async` falls back to asyncio as on a machine where uvloop is missing
(RELIABILITY.md test 20 runs every process under both loops).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from tests.support.workload import ROOT

NO_UVLOOP = ROOT / "tests" / "support" / "no_uvloop"


LIVE: list[GpoProcess] = []
"""Every GpoProcess started; `kill_leftovers` ends those a failed test did not stop."""


def kill_leftovers() -> int:
    """SIGKILL every GpoProcess still running; how many there were."""
    left = [p for p in LIVE if p.proc.poll() is None]
    for p in left:
        p.kill()
    LIVE.clear()
    return len(left)


class GpoProcess:
    """A gpo-* process whose stderr lines are collected; `wait_for(text)` blocks until seen.
    `port`: its --metrics-port, if the caller chose one (`value` reads a metric there)."""

    def __init__(
        self,
        module: str,
        *args: str,
        env: dict | None = None,
        port: int | None = None,
        loop: str = "uvloop",
    ):
        path = f"{NO_UVLOOP}{os.pathsep}{ROOT}" if loop == "asyncio" else str(ROOT)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=path, **(env or {})),
        )
        LIVE.append(self)
        self.port = port
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        for line in list(self.lines):
            if text in line:
                return line
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and self._new.empty():
                break
            try:
                line = self._new.get(timeout=0.2)
            except queue.Empty:
                continue
            if text in line:
                return line
        raise AssertionError(f"{text!r} not seen; output:\n" + "\n".join(self.lines[-40:]))

    def metric(self, port: int, name: str) -> float:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def value(self, name: str) -> float:
        """Sum of a metric's samples on this process's own metrics port."""
        return self.metric(self.port, name)

    def metrics_text(self) -> str:
        """This process's whole /metrics page."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        return urllib.request.urlopen(url, timeout=5).read().decode()

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def rss_bytes(self) -> int:
        """Resident memory now (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def maps(self, text: str) -> bool:
        """Whether a file whose path contains `text` is mapped into the process (a loaded
        extension module, e.g. uvloop's)."""
        with open(f"/proc/{self.proc.pid}/maps") as f:
            return any(text in line for line in f)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM, wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
