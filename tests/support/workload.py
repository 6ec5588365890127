"""The transport fault tests' workload: test prompts written to stream `in`, what came out of
`out`, pending and dead; and the worker process that turns one into the other.

`Workload.report()` gives lost (produced, never processed and not dead-lettered) and twice
(processed more than once, counted before any deduplication: `ops.ledger.repeated`) so each
fault test can assert exactly what RELIABILITY.md promises. The system's own books, over its
four work streams, are `ops.ledger.Ledger`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ops.ledger import repeated
from protocol.codec import decode, encode
from protocol.consumer import FIELD
from protocol.messages import Prompt
from protocol.streams import Keys

ROOT = Path(__file__).resolve().parents[2]


def prompt(i: int, run: str = "t", text: str = "work") -> Prompt:
    return Prompt(
        id=f"p{i}",
        run=run,
        ts=time.time(),
        task="test",
        text=text,
        token_ids=[1, 2, 3],
        answer="0",
        epoch=0,
    )


@dataclass
class Report:
    lost: set[str]
    twice: dict[str, int]
    processed: Counter
    dead: list[dict]


class Workload:
    """Everything produced into `in` and everything that came out of `out`."""

    def __init__(self, client, run: str = "t"):
        self.r, self.keys = client, Keys(run)
        self.run = run
        self.produced: list[str] = []

    def produce(self, n: int, text: str = "work", start: int | None = None) -> list[str]:
        start = len(self.produced) if start is None else start
        msgs = [prompt(start + i, self.run, text) for i in range(n)]
        p = self.r.pipeline(transaction=True)
        for m in msgs:
            p.xadd(self.keys.stream("in"), {FIELD: encode(m)})
        p.incrby(self.keys.produced("in"), n)
        p.execute()
        self.produced += [m.id for m in msgs]
        return [m.id for m in msgs]

    def inject(self, raw: bytes) -> str:
        """Write arbitrary bytes as an entry of `in` (hostile payloads)."""
        self.r.incrby(self.keys.produced("in"), 1)
        return self.r.xadd(self.keys.stream("in"), {FIELD: raw}).decode()

    def processed(self) -> Counter:
        entries = self.r.xrange(self.keys.stream("out"))
        return Counter(decode(fields[FIELD]).id for _, fields in entries)

    def dead(self, stream: str = "in") -> list[dict]:
        return [
            {k.decode(): v for k, v in fields.items()}
            for _, fields in self.r.xrange(self.keys.dead(stream))
        ]

    def pending(self) -> int:
        try:
            return int(self.r.xpending(self.keys.stream("in"), "workers")["pending"])
        except Exception:  # noqa: BLE001 - no group yet
            return 0

    def report(self) -> Report:
        processed = self.processed()
        dead = self.dead()
        dead_ids = set()
        for d in dead:
            with contextlib.suppress(Exception):  # hostile payloads have no id
                dead_ids.add(decode(d["raw"]).id)
        lost = set(self.produced) - set(processed) - dead_ids
        return Report(lost=lost, twice=repeated(processed), processed=processed, dead=dead)

    def wait_processed(self, ids, timeout: float) -> bool:
        want = set(ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if want <= set(self.processed()):
                return True
            time.sleep(0.1)
        return False


class Worker:
    """A tests.support.worker process."""

    def __init__(self, url: str, name: str, *flags: str, run: str = "t"):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.worker",
                "--url",
                url,
                "--run",
                run,
                "--name",
                name,
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        self.name = name
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.proc.kill()
            raise RuntimeError(
                f"worker {name} did not start: {line}{self.proc.stderr.read()[-3000:]}"
            )
        self.metrics_port = int(line.split("metrics=")[1])

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
        return self.proc.wait(timeout)

    def metric(self, name: str) -> float:
        """Sum of a metric's samples from the worker's /metrics."""
        import urllib.request

        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total
