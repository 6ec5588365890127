"""The LoRA policy, its adapter export, PPO updates, checkpoints, the feeder and the config."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load as load_safetensors
from transformers import AutoModelForCausalLM

from actors.engines.lora_versions import LoraVersions, lora_config_from_dict
from actors.tasks.base import TaskPrompt
from learner.checkpoint import LearnerState, load_latest, save_checkpoint
from learner.config import (
    EvalSettings,
    FeederSettings,
    LearnerConfig,
    LoraSettings,
    PpoSettings,
)
from learner.feeder import Feeder, epoch_order
from learner.policy import build_policy
from learner.train import make_optimizer, on_policy_step, ppo_update
from protocol.config import ConfigError, from_mapping
from protocol.safetensors_layout import layout
from tests.support.learner import make_sample, tiny_config, tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def batch(n: int = 6):
    return [
        make_sample(
            f"s{i}", seed=i, reward=float(i % 2), prompt_id=f"p{i // 2}", completion_len=3 + i
        )
        for i in range(n)
    ]


def trained(cfg: LearnerConfig, updates: int = 1):
    policy = build_policy(cfg)
    opt = make_optimizer(policy, cfg)
    for step in range(updates):
        ppo_update(policy, opt, batch(), cfg, step)
    return policy, opt


def test_exported_adapter_loads_into_an_engine_and_matches(model_dir):
    cfg = tiny_config(model_dir, advantage="group")
    policy, _ = trained(cfg)
    blob, config = policy.export_adapter()
    weights = load_safetensors(blob)
    assert set(weights) == set(get_peft_model_state_dict(policy.model))
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)
    assert config == {
        "r": 4,
        "lora_alpha": 8.0,
        "lora_dropout": 0.0,
        "target_modules": ["k_proj", "o_proj", "q_proj", "v_proj"],
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }
    engine_side = LoraVersions(AutoModelForCausalLM.from_pretrained(model_dir).eval())
    engine_side.add(1, lora_config_from_dict(config), weights)
    engine_side.activate(1)
    ids = torch.tensor([[5, 9, 11, 20, 7]])
    policy.model.eval()
    with torch.no_grad():
        ours = policy.model(input_ids=ids).logits
        theirs = engine_side._peft(input_ids=ids).logits
        with policy.reference():
            ref = policy.model(input_ids=ids).logits
        engine_side.activate(0)
        base = engine_side._peft(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ref, base)  # reference = the base model, adapter disabled
    assert not torch.allclose(ours, ref)


def test_the_adapter_is_published_in_lora_publish_dtype(model_dir):
    cfg = tiny_config(model_dir, advantage="group")
    policy, _ = trained(cfg)
    fp32_blob, _ = policy.export_adapter()
    policy.cfg = replace(cfg, lora=replace(cfg.lora, publish_dtype="bf16"))
    bf16_blob, _ = policy.export_adapter()
    fp32, bf16 = load_safetensors(fp32_blob), load_safetensors(bf16_blob)
    assert set(fp32) == set(bf16)
    for name, t in bf16.items():
        assert t.dtype == torch.bfloat16 and fp32[name].dtype == torch.float32
        assert torch.equal(t, fp32[name].to(torch.bfloat16))  # rounded once, from fp32
    data = {b: sum(s.nbytes for s in layout(b).values()) for b in (fp32_blob, bf16_blob)}
    assert data[fp32_blob] == 2 * data[bf16_blob] == 4 * sum(t.numel() for t in fp32.values())
    # the learner's own weights stay fp32
    assert all(p.dtype == torch.float32 for p in policy.trainable())


def test_zero_advantages_leave_the_policy_unchanged(model_dir):
    """With every advantage 0 (one prompt, equal rewards) and no KL, nothing should move."""
    cfg = tiny_config(model_dir, advantage="group", ppo={"kl_coef": 0.0})
    policy = build_policy(cfg)
    before = {k: v.clone() for k, v in get_peft_model_state_dict(policy.model).items()}
    opt = make_optimizer(policy, cfg)
    same = [make_sample(f"s{i}", seed=i, reward=1.0, prompt_id="p") for i in range(4)]
    stats = ppo_update(policy, opt, same, cfg, 0)
    assert stats["loss"] == 0.0 and stats["grad_norm"] == 0.0
    assert stats["tokens"] == 4 * 6
    for k, v in get_peft_model_state_dict(policy.model).items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_first_update_is_on_policy_and_clips_nothing(model_dir):
    """Epoch 1 of the first minibatch runs at ratio 1: clip fraction and approx KL are 0."""
    cfg = tiny_config(model_dir, advantage="gae", ppo={"epochs": 1, "minibatches": 1})
    policy = build_policy(cfg)
    opt = make_optimizer(policy, cfg)
    stats = ppo_update(policy, opt, batch(), cfg, 0)
    assert stats["clip_fraction"] == 0.0 and abs(stats["approx_kl"]) < 1e-6
    assert stats["value_loss"] > 0 and stats["grad_norm"] > 0


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_one_step_update_without_the_pi_old_pass_is_the_same_update(model_dir, kl_coef):
    """One epoch of one minibatch skips the no-grad pi_old pass (its log-probs equal the
    training forward's): the weights and statistics equal those of the update with it."""
    cfg = tiny_config(model_dir, advantage="group", ppo={"kl_coef": kl_coef}, token_budget=40)
    assert on_policy_step(build_policy(cfg), cfg)
    runs = []
    for old_pass in (True, None):
        policy = build_policy(cfg)
        opt = make_optimizer(policy, cfg)
        stats = [ppo_update(policy, opt, batch(), cfg, s, old_pass=old_pass) for s in range(2)]
        runs.append((stats, get_peft_model_state_dict(policy.model)))
    (with_pass, weights_a), (skipped, weights_b) = runs
    for a, b in zip(with_pass, skipped, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    assert skipped[1]["grad_norm"] > 0 and skipped[1]["policy_loss"] != 0
    assert skipped[1]["clip_fraction"] == 0.0 and (kl_coef == 0) == (skipped[1]["kl"] == 0)
    for k, v in weights_a.items():
        torch.testing.assert_close(weights_b[k], v, rtol=1e-5, atol=1e-7)
    # more than one optimizer step, or a value head, needs the pass
    assert not on_policy_step(build_policy(cfg), tiny_config(model_dir, ppo={"minibatches": 2}))
    gae = tiny_config(model_dir, advantage="gae")
    assert not on_policy_step(build_policy(gae), gae)


def test_checkpoint_round_trip_resumes_the_same_training(model_dir, tmp_path):
    cfg = tiny_config(model_dir, advantage="gae", ppo={"kl_coef": 0.05})
    policy, opt = trained(cfg, updates=2)
    state = LearnerState(
        step=2, version=2, trained_ids={"b": 2, "a": 1}, feeder_epoch=1, feeder_index=7
    )
    head = policy.value_head.state_dict()
    for step in (1, 2):  # two checkpoints; keep=1 prunes the first
        state.step = step
        save_checkpoint(
            tmp_path, state, get_peft_model_state_dict(policy.model), head, opt.state_dict(), keep=1
        )
    (tmp_path / "step-000009.tmp").mkdir()  # a half-written checkpoint is never picked
    ckpt = load_latest(tmp_path)
    assert ckpt.path.name == "step-000002"
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000002", "step-000009.tmp"]
    assert ckpt.state == state
    meta = json.loads((ckpt.path / "state.json").read_text())
    assert meta["trained_ids"] == {"a": 1, "b": 2}

    fresh = build_policy(cfg)
    fresh.load_adapter_state(ckpt.adapter)
    fresh.value_head.load_state_dict(ckpt.value_head)
    fresh_opt = make_optimizer(fresh, cfg)
    fresh_opt.load_state_dict(ckpt.optimizer)
    a = ppo_update(policy, opt, batch(), cfg, 2)
    b = ppo_update(fresh, fresh_opt, batch(), cfg, 2)
    assert a == pytest.approx(b, rel=1e-6, abs=1e-9)
    for k, v in get_peft_model_state_dict(policy.model).items():
        torch.testing.assert_close(get_peft_model_state_dict(fresh.model)[k], v)


def test_load_adapter_state_refuses_other_keys(model_dir):
    policy = build_policy(tiny_config(model_dir))
    with pytest.raises(ValueError, match="adapter keys differ"):
        policy.load_adapter_state({"x": torch.zeros(1)})


class FakeProducer:
    def __init__(self, backlog: int):
        self.value, self.sent = backlog, []

    async def backlog(self, stream: str) -> int:
        return self.value

    async def send(self, stream, msgs, wait=True):
        self.sent += msgs
        self.value += len(msgs)


def test_feeder_tops_up_to_target_across_epochs():
    prompts = [TaskPrompt(f"t:{i}", f"Q: {i}+1\n", str(i + 1)) for i in range(3)]
    prod = FakeProducer(backlog=1)
    f = Feeder(prod, prompts, lambda t: [3] * len(t), "arith", "r", target=5, bound=6, seed=0)
    assert asyncio.run(f.top_up()) == 4
    assert asyncio.run(f.top_up()) == 0  # at the target: nothing more
    ids = [p.id for p in prod.sent]
    assert ids == ["train:0:0", "train:0:1", "train:0:2", "train:1:0"]
    order0, order1 = epoch_order(3, 0, 0), epoch_order(3, 0, 1)
    assert [p.text for p in prod.sent] == [prompts[i].text for i in order0] + [
        prompts[order1[0]].text
    ]
    assert prod.sent[3].epoch == 1 and (f.epoch, f.index) == (1, 1)
    prod.value = 0
    assert asyncio.run(f.top_up()) == 5 and prod.value == 5 <= f.bound


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LearnerConfig(reset_fraction=1.5), "learner.reset_fraction"),
        (lambda: LearnerConfig(batch_size=0), "learner.batch_size"),
        (
            lambda: FeederSettings(backlog_target=10, backlog_bound=5),
            "learner.feeder.backlog_target",
        ),
        (lambda: PpoSettings(lr=0.0), "learner.ppo.lr"),
        (lambda: LoraSettings(target_modules=[]), "learner.lora.target_modules"),
        (lambda: EvalSettings(count=0), "learner.eval.count"),
        (lambda: LearnerConfig(batch_size=2, ppo=PpoSettings(minibatches=4)), "ppo.minibatches"),
    ],
)
def test_config_refuses_bad_values(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_the_parts_of_the_learner_config_have_their_own_tables():
    cfg = from_mapping(
        LearnerConfig,
        {
            "lora": {"rank": 2},
            "ppo": {"epochs": 3},
            "eval": {"every": 5},
            "feeder": {"backlog_target": 7},
        },
        "learner",
    )
    assert (cfg.lora.rank, cfg.lora.alpha) == (2, LoraSettings.alpha)
    assert (cfg.ppo.epochs, cfg.eval.every, cfg.feeder.backlog_target) == (3, 5, 7)
    with pytest.raises(ConfigError, match=r"\[learner\] unknown key\(s\): lora_rank"):
        from_mapping(LearnerConfig, {"lora_rank": 4}, "learner")


def test_the_clip_binds_only_with_several_optimizer_steps_per_batch(model_dir):
    """The ablation's `clip` regime (4 minibatches): after the first optimizer step of a
    batch the ratio moves off 1 and the clip binds; with one minibatch (the default's single
    pass) it never can."""
    stats = {}
    for minibatches in (1, 4):
        cfg = tiny_config(
            model_dir,
            advantage="group",
            ppo={"minibatches": minibatches, "lr": 0.05},
            token_budget=16,
        )
        policy = build_policy(cfg)
        stats[minibatches] = ppo_update(policy, make_optimizer(policy, cfg), batch(8), cfg, 0)
    assert stats[1]["clip_fraction"] == 0.0
    assert stats[4]["clip_fraction"] > 0.0


def test_a_non_finite_loss_never_reaches_the_weights(model_dir):
    """A NaN advantage (or any non-finite loss or gradient) skips the optimizer step and is
    counted; the weights and the optimizer state stay finite and unchanged."""
    cfg = tiny_config(model_dir, advantage="mc", whiten_advantages=False)
    policy = build_policy(cfg)
    opt = make_optimizer(policy, cfg)
    before = [q.detach().clone() for q in policy.trainable()]
    poisoned = batch()
    poisoned[0] = replace(poisoned[0], advantages=np.full(len(poisoned[0].token_ids), np.nan))
    stats = ppo_update(policy, opt, poisoned, cfg, 0)
    assert stats["skipped_steps"] == 1.0 and stats["grad_norm"] == 0.0
    assert all(np.isfinite(v) for v in stats.values())
    for a, b in zip(before, policy.trainable(), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    assert not opt.state  # no moment was ever written
    clean = ppo_update(policy, opt, batch(), cfg, 1)  # the next batch trains as usual
    assert clean["skipped_steps"] == 0.0 and clean["grad_norm"] > 0
