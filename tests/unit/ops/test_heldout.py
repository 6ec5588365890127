"""`gpo eval`: the held-out pass@1 of a base model, with peft and learner-checkpoint adapters."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from actors.tasks.base import TaskPrompt
from ops.heldout import EvalArgs, evaluate, load_policy, main

TASK = "tests.unit.ops.test_heldout:DigitTask"


@dataclass
class DigitTask:
    """Prompts the tiny random model can read; a completion scores 1 when one of its first
    three characters is a digit (about half of the random model's samples)."""

    name: str = "digits"

    def train_prompts(self) -> list[TaskPrompt]:
        return []

    def heldout_prompts(self) -> list[TaskPrompt]:
        return [TaskPrompt(f"digits:heldout:{i}", f"q: {i}+{i}\n", str(2 * i)) for i in range(24)]

    def score(self, prompt: TaskPrompt, completion: str) -> float:
        return float(any(c.isdigit() for c in completion[:3]))


@pytest.fixture
def zero_adapters(tiny_model_dir, tmp_path):
    """The same zero-effect LoRA (B = 0) as a peft directory and as a learner checkpoint."""
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    peft_dir = tmp_path / "peft"
    model.save_pretrained(peft_dir)
    checkpoints = tmp_path / "learner"
    (checkpoints / "step-000003").mkdir(parents=True)
    save_file(get_peft_model_state_dict(model), checkpoints / "step-000003" / "adapter.safetensors")
    (checkpoints / "latest").write_text("step-000003")
    return peft_dir, checkpoints


def _score(model, adapter=None, seed=5) -> float:
    args = EvalArgs(
        model=str(model),
        adapter=adapter,
        task=TASK,
        prompts=24,
        seed=seed,
        max_new_tokens=8,
        batch=8,
        lora_alpha=8.0,
    )
    return evaluate(args, progress=False)["pass_at_1"]


def test_a_zero_effect_adapter_gives_the_base_models_pass_at_1(tiny_model_dir, zero_adapters):
    peft_dir, checkpoints = zero_adapters
    base = _score(tiny_model_dir)
    assert 0.0 < base < 1.0  # the test task discriminates
    assert _score(tiny_model_dir, str(peft_dir)) == base
    assert _score(tiny_model_dir, str(checkpoints)) == base  # `latest` is followed
    assert _score(tiny_model_dir, str(checkpoints / "step-000003")) == base
    assert _score(tiny_model_dir, seed=6) != base or _score(tiny_model_dir, seed=7) != base


def test_both_adapter_formats_load_their_weights(tiny_model_dir, zero_adapters, tmp_path):
    peft_dir, checkpoints = zero_adapters
    ids = torch.tensor([[5, 6, 7, 8]])
    base, _ = load_policy(tiny_model_dir, None)
    before = base.model(ids).logits
    for adapter in (peft_dir, checkpoints):
        policy, _ = load_policy(tiny_model_dir, str(adapter), lora_alpha=8.0)
        with torch.no_grad():
            for name, p in policy.model.named_parameters():
                if "lora_B" in name:
                    p.fill_(0.5)  # a nonzero B must reach the logits through the loaded modules
        assert not torch.allclose(policy.model(ids).logits, before)
        assert policy.model.peft_config["default"].r == 4


def test_bad_paths_exit_2_with_one_line(tiny_model_dir, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --model") and "\n" not in err and "Traceback" not in err
    assert main(["--model", str(tiny_model_dir), "--adapter", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --adapter") and "no such directory" in err
    (tmp_path / "empty").mkdir()
    assert main(["--model", str(tiny_model_dir), "--adapter", str(tmp_path / "empty")]) == 2
    assert "neither a peft adapter" in capsys.readouterr().err


def test_an_adapter_for_other_modules_is_refused(tiny_model_dir, tmp_path, capsys):
    ckpt = tmp_path / "step-000001"
    ckpt.mkdir()
    weights = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 7)}
    save_file(weights, ckpt / "adapter.safetensors")
    code = main(["--model", str(tiny_model_dir), "--adapter", str(ckpt), "--lora-alpha", "8"])
    assert code == 2
    assert "does not fit the model" in capsys.readouterr().err


def test_a_checkpoints_alpha_comes_from_its_runs_config(tmp_path):
    from ops.heldout import _run_lora_alpha

    config = tmp_path / "demo.toml"
    config.write_text("[learner.lora]\nrank = 8\nalpha = 32.0\n")
    run = tmp_path / "runs" / "r1"
    (run / "learner" / "step-000002").mkdir(parents=True)
    (run / "launch.json").write_text(f'{{"config": "{config}"}}')
    assert _run_lora_alpha(run / "learner" / "step-000002") == 32.0
    assert _run_lora_alpha(tmp_path / "elsewhere" / "step-1") == 16.0  # the learner default
    config.write_text("[learner]\nlora_rank = 8\nlora_alpha = 24.0\n")  # a run of before
    assert _run_lora_alpha(run / "learner" / "step-000002") == 24.0
