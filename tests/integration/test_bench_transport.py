"""The transport benchmark runs end to end on a small size and prints its ratios.

No speed is asserted (timings on a shared machine are noisy); the test checks that both
paths moved every message and the adapter readers got the exact bytes (asserted inside)."""

import re

from ops.bench.transport import main


def test_transport_benchmark_small(capsys):
    assert (
        main(
            [
                "--messages",
                "256",
                "--tokens",
                "256",
                "--batch",
                "32",
                "--repeats",
                "1",
                "--adapter-mb",
                "4",
                "--readers",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rates = {
        name: float(rate)
        for name, rate in re.findall(r"^(gpo client|raw redis-py)\S* .*?\s(\d+)\s", out, re.M)
    }
    assert set(rates) == {"gpo client", "raw redis-py"} and all(r > 0 for r in rates.values()), out
    assert re.search(r"client / raw throughput: \d+\.\d\d", out)
    assert re.search(r"^chunked 4 MiB\s+\d+\.\d+\s+\d+\.\d+$", out, re.M), out
