"""Data parallelism: 2 gloo processes give the same update as 1 process on the same batch.

Each process builds the same tiny policy (same seed), trains one `ppo_update` (2 epochs, 2
minibatches, KL on, whitening on) on the same 8 samples, and writes its adapter; the
micro-batches are split between the ranks, so the match holds only if the token counts,
the whitening statistics and the gradients are all reduced across ranks correctly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.test_learner_process import free_port
from tests.support.learner import tiny_model
from tests.support.workload import ROOT

WORKER = """
import sys, torch
from safetensors.torch import save_file
from peft.utils import get_peft_model_state_dict
from learner.distributed import init_world, broadcast_samples
from learner.policy import build_policy
from learner.train import make_optimizer, ppo_update
from tests.support.learner import make_sample, tiny_config

torch.set_num_threads(1)
model, mode, out = sys.argv[1:4]
cfg = tiny_config(model, advantage=mode, token_budget=24,
                  ppo={"kl_coef": 0.1, "epochs": 2, "minibatches": 2, "lr": 1e-3})
world = init_world("cpu")
policy = build_policy(cfg)
opt = make_optimizer(policy, cfg)
samples = [make_sample(f"s{i}", seed=i, reward=float(i % 3 == 0), prompt_id=f"p{i // 4}",
                       completion_len=3 + i, advantage=0.1 * i) for i in range(8)]
samples = broadcast_samples(world, samples if world.rank == 0 else None)
stats = ppo_update(policy, opt, samples, cfg, 0, world)
if world.rank == 0:
    state = {k: v.contiguous() for k, v in get_peft_model_state_dict(policy.model).items()}
    if policy.value_head is not None:
        state.update({"head." + k: v for k, v in policy.value_head.state_dict().items()})
    save_file(state, out)
    print("stats", stats["loss"], stats["tokens"])
"""


def launch(model: str, mode: str, out: Path, world: int) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            OMP_NUM_THREADS="1",
            WORLD_SIZE=str(world),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, model, mode, str(out)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


@pytest.mark.parametrize("mode", ["mc", "gae"])
def test_two_gloo_ranks_match_one_process(tmp_path, mode):
    model = tiny_model(tmp_path / "model")
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    procs = launch(model, mode, one, 1) + launch(model, mode, two, 2)
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outputs)
    a, b = load_file(one), load_file(two)
    assert a.keys() == b.keys()
    # B matrices start at zero: the update must have moved them
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    stats_one = outputs[0].split("stats")[1].split()
    stats_two = outputs[1].split("stats")[1].split()
    assert float(stats_one[1]) == float(stats_two[1])  # same token count
    assert float(stats_one[0]) == pytest.approx(float(stats_two[0]), rel=1e-4, abs=1e-7)
