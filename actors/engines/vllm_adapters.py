"""LoRA adapter versions for the vLLM engine: checks, tmpfs directories and in-flight pins.

vLLM loads an adapter from a directory (`adapter_config.json` + `adapter_model.safetensors`)
inside its engine process; a bad adapter found there can take the engine down, so every
adapter is checked here first, against the base model's structure built on the meta device
(no weights, no memory) and against vLLM's own config rules (`PEFTHelper.validate_legal`):
- the config parses (peft `LoraConfig`) and vLLM supports its features (no DoRA, bias,
  `modules_to_save`, PiSSA/LoftQ inits) and its rank is at most `max_lora_rank`;
- the weights are safetensors whose keys and shapes are exactly what the config injects;
- every adapted module is a linear layer vLLM can serve LoRA on (not `lm_head`, embeddings).

Versions (VLLM.md): each version k gets a fresh name, int id and directory, written under a
temporary name and renamed into place, so vLLM never reads a half-written adapter. A version
stays loaded while any request started under it runs (`VersionPins`); its directory is
deleted only after `remove_lora`, after its last request.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from peft import get_peft_model, get_peft_model_state_dict
from transformers import AutoConfig, AutoModelForCausalLM
from vllm.lora.peft_helper import PEFTHelper

from actors.engines.lora_versions import lora_config_from_dict, parse_adapter_weights

# Module names vLLM never adapts with a LoRA on a causal LM (ParallelLMHead is no LinearBase).
_UNSERVED = frozenset({"lm_head"})


@dataclass(frozen=True, slots=True)
class CheckedAdapter:
    """An adapter that passed every check, ready to be written for vLLM."""

    config: dict
    """adapter_config.json contents (JSON-safe)."""
    weights: bytes
    """The safetensors bytes as received (peft key names)."""
    rank: int
    """LoRA rank `r`."""


class AdapterChecker:
    """Refuses, with ValueError, adapters that the vLLM engine of `model_dir` cannot load."""

    def __init__(self, model_dir: str, max_lora_rank: int) -> None:
        self.model_config = AutoConfig.from_pretrained(model_dir)
        self.max_lora_rank = max_lora_rank

    def check(self, config: dict, safetensors_bytes: bytes | bytearray) -> CheckedAdapter:
        lora = lora_config_from_dict(config)
        config = _json_safe(config)
        try:
            helper = PEFTHelper.from_dict(config)
            helper.validate_legal(SimpleNamespace(max_lora_rank=self.max_lora_rank))
        except (TypeError, ValueError) as err:
            raise ValueError(f"vLLM cannot load this LoRA config: {err}") from err
        weights = parse_adapter_weights(safetensors_bytes)
        expected, linear = self._expected(lora)
        problem = _mismatch(expected, weights)
        if problem:
            raise ValueError(f"adapter weights do not fit the model: {problem}")
        unserved = sorted(
            {
                _module_of(key)
                for key in expected
                if _module_of(key) not in linear or _module_of(key).rsplit(".", 1)[-1] in _UNSERVED
            }
        )
        if unserved:
            raise ValueError(
                f"vLLM serves LoRA only on the decoder's linear layers; refusing {unserved[:3]}"
            )
        return CheckedAdapter(config, safetensors_bytes, int(lora.r))

    def _expected(self, lora) -> tuple[dict[str, torch.Tensor], set[str]]:
        """The adapter state dict `lora` injects into the base model (meta tensors) and the
        names of the base model's linear layers."""
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(self.model_config)
            linear = {name for name, m in model.named_modules() if type(m) is torch.nn.Linear}
            try:
                peft_model = get_peft_model(model, lora)
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError(f"cannot apply this LoRA config to the model: {err}") from err
            return get_peft_model_state_dict(peft_model), linear


def _module_of(key: str) -> str:
    """`base_model.model.<module>.lora_A.weight` -> `<module>`."""
    module = key.removeprefix("base_model.model.")
    for part in (".lora_A", ".lora_B", ".lora_embedding_A", ".lora_embedding_B"):
        if part in module:
            return module.split(part, 1)[0]
    return module.rsplit(".", 1)[0]


def _mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """How `given` differs from `expected` in keys or shapes; empty when it fits."""
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        return f"missing keys {missing[:3]} ({len(missing)}), unexpected keys {extra[:3]} ({len(extra)})"
    for key, tensor in expected.items():
        if tuple(given[key].shape) != tuple(tensor.shape):
            return f"{key} has shape {tuple(given[key].shape)}, expected {tuple(tensor.shape)}"
    return ""


def _json_safe(config: dict) -> dict:
    """The config as adapter_config.json holds it (sets become sorted lists)."""
    return json.loads(
        json.dumps(
            config, default=lambda v: sorted(v) if isinstance(v, set | frozenset) else str(v)
        )
    )


class AdapterDirs:
    """One directory per adapter version under `root` (a tmpfs), written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, adapter: CheckedAdapter) -> Path:
        """Write `name/` via a temporary directory and one rename; returns its path."""
        final = self.root / name
        if final.exists():
            raise ValueError(f"adapter directory {final} already exists")
        tmp = self.root / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / "adapter_config.json").write_text(json.dumps(adapter.config))
        (tmp / "adapter_model.safetensors").write_bytes(adapter.weights)
        os.rename(tmp, final)
        return final

    def remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def remove_root(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
