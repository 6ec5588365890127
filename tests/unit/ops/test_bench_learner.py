"""gpo bench learner on a tiny random Llama: the batch is built as the system builds it, and
the printed ratios are the timings' ratios. No speed is asserted."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from actors.tasks.base import load_task
from ops.bench import learner_update as bl
from ops.tiny_policy.bootstrap import TASK_SPECS
from tests.support.learner import tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("bench-learner") / "model")


def test_batch_is_built_like_the_system_builds_it(model):
    args = argparse.Namespace(config=str(bl.DEMO_CONFIG), batch_size=8, max_new_tokens=8)
    learner, rollout, estimator = bl.load_configs(args, model)
    assert (learner.batch_size, learner.reset_fraction, rollout.max_new_tokens) == (8, 0.5, 8)
    task = load_task(TASK_SPECS["arithmetic"], n_train=20, n_heldout=4)
    samples = bl.build_batch(model, task, learner, rollout, estimator)
    assert len(samples) == 8 and sum(s.kind == "reset" for s in samples) == 4
    for s in samples:
        n = len(s.token_ids)
        assert len(s.loss_mask) == len(s.logprobs) == len(s.advantages) == n
        prefix = int(np.argmax(s.loss_mask)) if s.loss_mask.any() else n
        assert not s.loss_mask[prefix:].size or s.loss_mask[prefix:].all()
        assert not s.advantages[:prefix].any() and not s.logprobs[:prefix].any()
        if s.kind == "reset":  # reward - V(s_m) on every completion token
            assert len(set(s.advantages[prefix:].tolist())) <= 1

    policy = bl.build_policy(learner)
    rows = bl.run(policy, samples, learner, repeats=1)
    assert [r.case for r in rows][:2] == ["floor: forward + CE + backward", "learner: ppo_update"]
    assert all(r.tokens == sum(len(s.token_ids) for s in samples) for r in rows)
    assert all(r.trained == int(sum(s.loss_mask.sum() for s in samples)) for r in rows)
    assert all(r.seconds > 0 for r in rows)


def test_main_prints_ratios_of_its_timings(model, capsys):
    argv = ["--model", model, "--batch-size", "4", "--max-new-tokens", "6", "--repeats", "1"]
    assert bl.main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("floor:", "learner:", "part"))]
    assert len(lines) == 3, out
    cells = [line.rsplit(None, 4)[1:] for line in lines]
    floor_ms = float(cells[0][0])
    for ms, tok_s, _, ratio in cells:
        # same tokens in every row: the speed ratio is the inverse time ratio
        # (printed ms have one decimal, ratios two)
        assert float(ratio.rstrip("x")) == pytest.approx(floor_ms / float(ms), rel=0.05, abs=0.02)
        assert float(tok_s) > 0
    assert "The learner's update ran at" in out
