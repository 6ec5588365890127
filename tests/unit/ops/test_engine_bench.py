"""ops/bench/engine.py: the table arithmetic by hand, and one very small end-to-end run."""

from __future__ import annotations

from ops.bench.engine import Row, _count_until_eos, format_table, main


def test_table_speeds_and_ratios():
    table = format_table([Row("base", 2.0, 100), Row("fast", 0.5, 100, baseline="base")])
    base, fast = table.splitlines()[1:]
    assert base.split()[-1] == "50"  # 100 tokens / 2 s, no ratio on a baseline row
    assert fast.split()[-2:] == ["200", "4.00x"]


def test_generate_tokens_are_counted_through_first_eos():
    assert _count_until_eos([[5, 1, 0, 0], [5, 6, 7, 8]], eos=1) == 2 + 4
    assert _count_until_eos([[5, 6]], eos=None) == 2


def test_tiny_run_prints_every_case(capsys):
    argv = "--batch 2 --new-tokens 2 --prefixes 2 --samples 2 --step-tokens 3 --prompt-tokens 4"
    argv += " --mc-tokens 2 --repeats 1 --hidden-size 32 --layers 1"
    assert main(argv.split()) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cases = [
        line.rsplit(None, 4)[0] if line.endswith("x") else line.rsplit(None, 3)[0]
        for line in lines[1:]
    ]
    assert cases == [
        "generate() batch 2",
        "engine batch 2",
        "forward-only floor batch 2",
        "estimator 2x2 prefix off",
        "estimator 2x2 prefix request",
        "estimator 2x2 prefix shared",
    ]
