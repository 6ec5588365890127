"""One supervised worker process of `gpo launch` (and of the benches that start workers):
its command line, its log, its restarts, and its death with the launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Worker:
    """One supervised process."""

    name: str
    module: str
    args: list[str]
    log: Path
    port: int
    env: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started: float = 0.0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                *self.args,
                "--name",
                self.name,
                "--metrics-port",
                str(self.port),
                "--metrics-host",
                "127.0.0.1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **self.env},
            start_new_session=True,  # Ctrl-C in the terminal goes to the launcher alone
            preexec_fn=die_with_parent,
        )
        out.close()
        self.started = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM it if the launcher dies (even by SIGKILL), so a
    crashed or killed launcher never leaves workers behind (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log (for the error a failed worker ends the run with)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def prometheus_targets(run_id: str, workers: list[Worker]) -> list[dict]:
    """The Prometheus file_sd entries of a run: one target per worker's metrics port,
    labelled with its role (`process`) and name."""
    return [
        {
            "targets": [f"127.0.0.1:{w.port}"],
            "labels": {
                "job": "gpo",
                "run": run_id,
                "process": w.name.split("-")[0],
                "name": w.name,
            },
        }
        for w in workers
    ]
