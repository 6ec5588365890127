"""The harness every benchmark and experiment shares: its command line, alternating timed
rounds, console and markdown tables, the machine line, and the RESULTS.md sections.

Command line: `parser(prog, doc)` with the flags all of them take (`--write-results`, and
`--repeats` where rounds are timed). Timing: `alternate` runs the cases in turn, one round
after another, so drift on a shared machine hits every case alike; figures are medians.

docs/RESULTS.md: every experiment or benchmark that reports into RESULTS.md owns one section, delimited by

    <!-- gpo:NAME begin -->
    ...
    <!-- gpo:NAME end -->

and `write_section` replaces exactly that block (or appends it when it is missing), so
rerunning a command regenerates its table and leaves the others untouched. Text outside the
markers (the reading, the paper comparison) is written by hand. Plots go to
`docs/results/` and are linked relatively from the section.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "RESULTS.md"
PLOTS = ROOT / "docs" / "results"


def _markers(name: str) -> tuple[str, str]:
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ValueError(f"section name must be lowercase words joined by '-', got {name!r}")
    return f"<!-- gpo:{name} begin -->", f"<!-- gpo:{name} end -->"


def machine_line() -> str:
    """Where a figure was measured: cores, memory, load at the time, date."""
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} CPU cores, {mem:.0f} GiB, {platform.machine()}, "
        f"load average {load:.1f} at the end; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def replace_section(text: str, name: str, body: str) -> str:
    """`text` with section `name` set to `body` (appended at the end when absent)."""
    begin, end = _markers(name)
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def read_section(name: str, path: Path = RESULTS) -> str | None:
    """The body of section `name`, or None when the file or the section is missing."""
    if not path.is_file():
        return None
    begin, end = _markers(name)
    m = re.search(re.escape(begin) + r"\n(.*?)\n?" + re.escape(end), path.read_text(), re.DOTALL)
    return m.group(1) if m else None


def write_section(name: str, body: str, path: Path = RESULTS) -> Path:
    """Write section `name` of RESULTS.md (creating the file when needed); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.is_file() else "# Results\n"
    path.write_text(replace_section(text, name, body))
    return path


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table; floats as given (format them before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_bench_section(name: str, argv: Sequence[str], table: str, reading: str) -> Path:
    """Write the section `bench-NAME` of `gpo bench NAME ARGV...` (`bench_body`), and say so."""
    path = write_section(f"bench-{name}", bench_body(name, argv, table, reading))
    print(f"\nwrote section bench-{name} of {path}")
    return path


def bench_body(name: str, argv: Sequence[str], table: str, reading: str) -> str:
    """The section of `gpo bench NAME ARGV...`: the exact command, where it ran, the table
    and a one-paragraph reading of it."""
    command = " ".join(["gpo", "bench", name, *(shlex.quote(a) for a in argv)])
    return f"Command: `{command}`\n\nMachine: {machine_line()}\n\n{table}\n\n{reading}"


def console_table(header: Sequence[str], rows: Sequence[Sequence[object]], left: int = 0) -> str:
    """A fixed-width console table: the first `left` columns aligned left, the rest right."""
    body = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(line[i]) for line in body) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))
        )
        for line in body
    )


# ---------------------------------------------------------------- timing


def alternate(
    cases: Sequence[Callable[[], T]],
    repeats: int,
    warmup: bool = True,
    before_each: Callable[[], object] | None = None,
) -> list[list[T]]:
    """Run every case once per round, in turn, for `repeats` rounds (after one untimed
    warm-up round unless `warmup` is off); `before_each` runs before every call (a reset of
    shared state). Returns each case's results, round by round."""
    rounds = ([0] if warmup else []) + list(range(1, repeats + 1))
    out: list[list[T]] = [[] for _ in cases]
    for k in rounds:
        for i, case in enumerate(cases):
            if before_each is not None:
                before_each()
            result = case()
            if k:
                out[i].append(result)
    return out


async def alternate_async(
    cases: Sequence[Callable[[], Awaitable[T]]], repeats: int, warmup: bool = True
) -> list[list[T]]:
    """`alternate` for coroutine functions."""
    out: list[list[T]] = [[] for _ in cases]
    for k in ([0] if warmup else []) + list(range(1, repeats + 1)):
        for i, case in enumerate(cases):
            result = await case()
            if k:
                out[i].append(result)
    return out


def timed(call: Callable[[], T]) -> Callable[[], tuple[float, T]]:
    """`call` returning (seconds it took, its result)."""

    def run() -> tuple[float, T]:
        start = time.perf_counter()
        result = call()
        return time.perf_counter() - start, result

    return run


def median_seconds(results: Sequence[tuple[float, object]]) -> float:
    """The median of the seconds of `timed` results."""
    return statistics.median(seconds for seconds, _ in results)


def timed_rounds(calls: Sequence[Callable[[], T]], repeats: int) -> list[tuple[float, T]]:
    """Each call's median seconds over `repeats` alternating rounds (after a warm-up round),
    with what its last call returned."""
    rounds = alternate([timed(call) for call in calls], repeats)
    return [(median_seconds(got), got[-1][1]) for got in rounds]


# ---------------------------------------------------------------- the command line


def parser(
    prog: str, doc: str | None, repeats: int | None = None, what: str = ""
) -> argparse.ArgumentParser:
    """The argument parser of `gpo bench|experiment NAME`: its module doc as the help, and
    the common flags: `--write-results` (its RESULTS.md section), and `--repeats` (timed
    rounds, medians reported) when `repeats` gives its default."""
    p = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if repeats is not None:
        p.add_argument(
            "--repeats", type=int, default=repeats, help=what or "timed rounds per case (median)"
        )
    p.add_argument(
        "--write-results", action="store_true", help="write its section of docs/RESULTS.md"
    )
    return p
