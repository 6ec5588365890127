"""The trained policy: a causal LM with a peft LoRA adapter, its reference, and a value head.

The reference policy is the same model with the adapter disabled (`reference()` context):
no second copy of the base weights. The value head (`gae` mode only) is a linear layer on
the last hidden state, kept in fp32 beside the model.

`export_adapter` gives exactly what an engine's `load_adapter(version, config, bytes)`
takes: the LoRA weights under peft's key names (`get_peft_model_state_dict`) as safetensors
bytes, and the LoraConfig as a plain dict of scalars and lists (it travels in msgpack).
Nothing here is ever loaded with pickle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from learner.config import LearnerConfig
from learner.logprobs import token_logprobs

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True, slots=True)
class Forward:
    """One forward pass over a padded micro-batch, target-aligned ([B, T-1])."""

    logprobs: Tensor
    """log pi(input_ids[:, t+1]), fp32."""
    values: Tensor | None
    """V(s_t) from the value head (None without one), fp32."""
    logits: Tensor
    """[B, T, V] raw logits (for entropy statistics)."""


def lora_config_dict(cfg: LearnerConfig) -> dict:
    """The LoraConfig fields an engine needs, as msgpack-safe scalars and lists."""
    return {
        "r": cfg.lora.rank,
        "lora_alpha": cfg.lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(cfg.lora.target_modules),
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }


class Policy:
    """The LoRA policy on one device; `trainable()` lists what the optimizer updates."""

    def __init__(self, model: PeftModel, value_head: nn.Linear | None, cfg: LearnerConfig):
        self.model = model
        self.value_head = value_head
        self.cfg = cfg
        self.device = next(model.parameters()).device

    def trainable(self) -> list[nn.Parameter]:
        """LoRA parameters (name order), then the value head's: a stable optimizer order."""
        params = [p for _, p in sorted(self.model.named_parameters()) if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return params

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Forward:
        """Logprobs (and values) of a right-padded micro-batch under the current policy."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=self.value_head is not None,
            use_cache=False,
        )
        logp = token_logprobs(out.logits, input_ids, self.cfg.temperature)
        values = None
        if self.value_head is not None:
            hidden = out.hidden_states[-1].float()
            values = self.value_head(hidden).squeeze(-1)[:, :-1]
        return Forward(logp, values, out.logits)

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Compute as the reference policy: the base model, adapter disabled."""
        with self.model.disable_adapter():
            yield

    def export_adapter(self) -> tuple[bytes, dict]:
        """(safetensors bytes of the LoRA weights under peft key names, in
        `lora.publish_dtype`; LoRA config dict)."""
        dtype = _DTYPES[self.cfg.lora.publish_dtype]
        state = {
            k: v.detach().to("cpu", dtype).contiguous()
            for k, v in get_peft_model_state_dict(self.model).items()
        }
        return save_safetensors(state, metadata={"format": "pt"}), lora_config_dict(self.cfg)

    def load_adapter_state(self, state: dict[str, Tensor]) -> None:
        """Load LoRA weights (peft key names), e.g. from a checkpoint; refuses missing keys."""
        expected = set(get_peft_model_state_dict(self.model))
        if set(state) != expected:
            raise ValueError(
                f"adapter keys differ from the model's: missing {sorted(expected - set(state))[:3]}"
                f", unexpected {sorted(set(state) - expected)[:3]}"
            )
        with torch.no_grad():
            set_peft_model_state_dict(self.model, state)


def load_tokenizer(cfg: LearnerConfig) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(cfg.model)


def build_policy(cfg: LearnerConfig, device: str | torch.device | None = None) -> Policy:
    """Load the base model, inject a fresh LoRA adapter (B = 0: the policy starts equal to
    the reference), and add a value head in `gae` mode. Deterministic for a given seed."""
    device = torch.device(device or cfg.device)
    base = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=_DTYPES[cfg.dtype])
    base.to(device)
    base.config.use_cache = False
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(**lora_config_dict(cfg))
    model = get_peft_model(base, lora)
    for p in model.parameters():  # LoRA weights in fp32 whatever the base dtype
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    head = None
    if cfg.advantage == "gae":
        head = nn.Linear(base.config.hidden_size, 1, dtype=torch.float32, device=device)
        with torch.no_grad():
            head.weight.normal_(0.0, 0.01)
            head.bias.zero_()
    return Policy(model, head, cfg)
