"""Bounded polling for tests: every wait in a load or fault test has a deadline.

- `poll(pred, timeout)`: the first truthy value of `pred()`, or None at the deadline (for
  `assert poll(...)` with the test's own message).
- `wait_until(pred, timeout, what, procs)`: the same, but a timeout fails the test with what
  it waited for and the last lines of each process, and it stops early when one exits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any


def poll(pred: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    """Call `pred` every `step` seconds until it returns something truthy (returned) or
    `timeout` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        time.sleep(step)
    return None


def wait_until(
    pred: Callable[[], Any],
    timeout: float,
    what: str,
    procs: Mapping[str, Any] | None = None,
    step: float = 0.5,
) -> Any:
    """Poll `pred` until truthy and return its value; fail with the processes' last lines on
    timeout or as soon as one of `procs` (name -> `GpoProcess`) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := pred():
            return value
        if procs and any(p.proc.poll() is not None for p in procs.values()):
            break
        time.sleep(step)
    tails = ""
    for role, p in (procs or {}).items():
        tails += f"\n--- {role} (rc {p.proc.poll()}):\n" + "\n".join(p.lines[-25:])
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tails}")
