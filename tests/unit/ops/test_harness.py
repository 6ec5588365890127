"""ops/harness.py: alternating rounds, tables and flags by hand."""

from __future__ import annotations

import asyncio

from ops.harness import alternate, alternate_async, console_table, parser, timed_rounds


def test_alternate_runs_the_cases_in_turn_and_keeps_the_warm_up_out():
    calls: list[str] = []

    def case(name: str):
        def run() -> str:
            calls.append(name)
            return f"{name}{sum(c == name for c in calls)}"

        return run

    got = alternate([case("a"), case("b")], repeats=2, before_each=lambda: calls.append("|"))
    assert calls == ["|", "a", "|", "b", "|", "a", "|", "b", "|", "a", "|", "b"]
    assert got == [["a2", "a3"], ["b2", "b3"]]  # the first round was the warm-up
    calls.clear()
    assert alternate([case("a")], repeats=2, warmup=False) == [["a1", "a2"]]


def test_alternate_async_and_timed_rounds():
    async def one() -> int:
        return 1

    assert asyncio.run(alternate_async([one, one], repeats=3)) == [[1, 1, 1], [1, 1, 1]]
    n = iter(range(10))
    ((seconds, last),) = timed_rounds([lambda: next(n)], repeats=3)
    assert last == 3 and 0 <= seconds < 1  # warm-up 0, rounds 1 2 3


def test_console_table_aligns_columns():
    table = console_table(["case", "s"], [["long name", "1.5"], ["x", "10.25"]], left=1)
    assert table.splitlines() == [
        "case           s",
        "long name    1.5",
        "x          10.25",
    ]


def test_parser_has_the_common_flags():
    args = parser("gpo bench x", "doc", repeats=4).parse_args([])
    assert args.repeats == 4 and args.write_results is False
    args = parser("gpo experiment y", "doc").parse_args(["--write-results"])
    assert args.write_results and not hasattr(args, "repeats")
