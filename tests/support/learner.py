"""Shared helpers of the learner tests: a tiny random Llama directory and Sample factories."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from learner.config import EvalSettings, FeederSettings, LearnerConfig, LoraSettings, PpoSettings
from ops.tiny_policy.tiny_model import ALPHABET, TinyModelConfig, build_tiny_model_dir
from protocol.messages import Sample

TINY = TinyModelConfig(
    hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128
)
"""Hidden 64, 2 layers: a forward and backward of a small batch takes milliseconds."""
VOCAB = 3 + len(ALPHABET)  # special tokens + the characters


def tiny_model(path: Path) -> str:
    if not (path / "config.json").exists():
        build_tiny_model_dir(path, TINY)
    return str(path)


def tiny_config(
    model: str,
    lora: dict | None = None,
    ppo: dict | None = None,
    eval: dict | None = None,  # noqa: A002 - the section's name
    feeder: dict | None = None,
    **overrides,
) -> LearnerConfig:
    """A learner config for the tiny model; `lora`, `ppo`, `eval` and `feeder` update those
    parts' tiny defaults, the other keywords the top-level fields."""
    base = dict(
        model=model,
        batch_size=8,
        token_budget=64,
        task="arithmetic",
        task_options={"n_train": 50, "n_heldout": 8},
        lora=LoraSettings(**{"rank": 4, "alpha": 8.0, **(lora or {})}),
        ppo=PpoSettings(**{"lr": 1e-2, **(ppo or {})}),
        eval=EvalSettings(**{"count": 4, "max_new_tokens": 8, **(eval or {})}),
        feeder=FeederSettings(**(feeder or {})),
    )
    base.update(overrides)
    return LearnerConfig(**base)


def make_sample(
    sid: str,
    prompt_len: int = 4,
    completion_len: int = 6,
    reward: float = 1.0,
    version: int = 0,
    kind: str = "fresh",
    prompt_id: str = "p0",
    seed: int = 0,
    advantage: float = 0.5,
    group: str = "",
    baseline_value: float = 0.0,
    baseline_count: int = 0,
    searched: bool = True,
) -> Sample:
    """A sample with the given per-token `advantage` on its completion. A fresh one that was
    `searched` carries step values (V(s_0), reward), so `mc` mode keeps its advantages; one
    that was not gets its group's advantage there."""
    rng = np.random.default_rng(seed)
    n = prompt_len + completion_len
    mask = np.r_[np.zeros(prompt_len), np.ones(completion_len)].astype(np.int32)
    return Sample(
        id=sid,
        run="t",
        ts=time.time(),
        prompt_id=prompt_id,
        kind=kind,
        token_ids=rng.integers(3, VOCAB, n).astype(np.int32),
        loss_mask=mask,
        logprobs=np.where(mask == 1, -np.log(VOCAB), 0.0).astype(np.float32),
        advantages=np.where(mask == 1, advantage, 0.0).astype(np.float32),
        returns=np.zeros(0, np.float32),
        step_values=np.array([0.5, reward] if kind == "fresh" and searched else [], np.float32),
        reward=reward,
        policy_version=version,
        group=group,
        baseline_value=baseline_value,
        baseline_count=baseline_count,
    )
