"""gpo bench adapter-bytes on a tiny random Llama: the first publish writes a whole version,
an unchanged republish writes nothing, bf16 versions are smaller, and what each update wrote
is what its chunks changed."""

from __future__ import annotations

import argparse

import pytest

from actors.tasks.base import load_task
from ops.bench import adapter_bytes as ab
from ops.bench import learner_update as bl
from ops.tiny_policy.bootstrap import TASK_SPECS
from tests.support.learner import tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("bench-bytes") / "model")


def test_bytes_written_per_version_and_per_dtype(model, redis_server):
    args = argparse.Namespace(config=str(bl.DEMO_CONFIG), batch_size=4, max_new_tokens=6)
    learner, rollout, estimator = bl.load_configs(args, model)
    task = load_task(TASK_SPECS["arithmetic"], n_train=20, n_heldout=4)
    samples = bl.build_batch(model, task, learner, rollout, estimator)
    fp32, bf16 = ab.measure(bl.build_policy, samples, learner, 3, redis_server.url)
    assert (fp32.dtype, bf16.dtype) == ("fp32", "bf16")
    for row in (fp32, bf16):
        assert len(row.written_bytes) == 3
        assert row.written_bytes[0] == row.version_bytes  # nothing to reuse yet
        assert all(0 <= w <= row.version_bytes for w in row.written_bytes)
        assert row.republish_bytes == 0  # the same weights again: every chunk named again
    assert fp32.tensors == bf16.tensors and bf16.version_bytes < fp32.version_bytes


def test_main_prints_a_row_per_dtype(model, capsys):
    argv = ["--model", model, "--updates", "2", "--batch-size", "4", "--max-new-tokens", "6"]
    assert ab.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["fp32"], ["bf16"])]
    assert [r[0] for r in rows] == ["fp32", "bf16"], out
    assert all(r[-1] == "0.000" for r in rows)  # the unchanged republish
    assert "One version of this adapter" in out
