"""The settings of offline GPO, with their defaults stated once: the dataclasses here and in
`pairs.py` are what `gpo offline` (cli.py) and `gpo experiment offline` take their defaults
from (`field_defaults`). No heavy imports: the command line reads them before torch loads."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Method = Literal["dpo", "kto", "simpo", "orpo"]


@dataclass(frozen=True, slots=True)
class TrainArgs:
    """One offline preference training run."""

    method: Method
    """Loss: `dpo`, `kto`, `simpo` or `orpo`."""
    pairs: str
    """pairs.jsonl with prompt, chosen, rejected."""
    model: str
    """Base model directory (the policy the pairs were sampled from)."""
    out: str
    """Adapter output directory (peft save_pretrained)."""
    steps: int = 100
    """Optimizer steps."""
    batch: int = 8
    """Pairs per step (KTO: rows per step, two rows per pair)."""
    lr: float = 5e-4
    """AdamW learning rate, constant."""
    beta: float = 0.1
    """DPO/KTO/SimPO beta; ORPO's lambda on the odds-ratio term."""
    simpo_gamma: float = 0.5
    """SimPO target margin, in units of beta * mean logprob."""
    lora_rank: int = 8
    """LoRA rank r; alpha = 2r on the attention projections (as `LearnerConfig`)."""
    max_length: int = 256
    """Tokens per prompt + completion; longer rows are truncated."""
    seed: int = 0
    """Seed of LoRA init and data order."""


def field_defaults(cls: type) -> dict[str, object]:
    """The default of each field of the dataclass `cls` that has one."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out
