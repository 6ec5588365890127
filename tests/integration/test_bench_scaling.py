"""ops/bench/scaling.py against a real redis-server and a real gpo-actor process."""

from __future__ import annotations

import argparse

from ops.bench.scaling import ROOT, run_trial


def test_one_actor_trial_counts_whole_batches_of_trajectories(
    redis_server, tiny_model_dir, tmp_path
):
    args = argparse.Namespace(
        config=str(ROOT / "ops" / "configs" / "demo.toml"),
        seconds=2.0,
        warmup=0.0,
        prompt_backlog=2,
    )
    t = run_trial(1, 0, args, redis_server, str(tiny_model_dir), tmp_path / "logs")
    assert t.actors == 1 and 2.0 <= t.seconds < 3.0
    # one engine batch is published in one MULTI/EXEC, so a read sees all of it or none:
    # demo.toml asks n = 4 rollouts per prompt
    assert t.trajectories > 0 and t.trajectories % 4 == 0
    assert t.trajectories <= t.tokens <= 48 * t.trajectories  # max_new_tokens = 48
    assert t.startup > 0 and t.cpu_seconds > 0  # the actor's CPU time in the window
    assert redis_server.client().dbsize() == 0  # the trial cleans up after itself
