"""LoRA adapter versions inside one transformers model, for the transformers engine.

Each version k lives as a peft adapter named `v<k>` injected into the same base model; version
0 is the base model with every adapter disabled. The engine activates a request's version
before each forward pass it runs (under the engine's model lock), so requests started under
different versions interleave safely. A version is deleted once it is neither the current one
nor used by a running request.

Weights arrive as safetensors bytes with peft's key names (`get_peft_model_state_dict` of the
learner's model); `parse_adapter_weights` checks the file's layout and views each tensor in
the received buffer (`protocol.safetensors_layout`): one parse, no copy, no pickle. An
adapter whose keys or shapes differ from what its config injects is refused with ValueError
and rolled back.

Methods that touch modules (`add`, `activate`, `delete`) must be called with the engine's
model lock held; the version pins (`VersionPins`: `acquire`, `release`, `make_current`) take their own small
lock, so the event loop can pin a version without waiting for a forward pass.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import PreTrainedModel

from protocol.safetensors_layout import DTYPE_BYTES, layout


def lora_config_from_dict(config: dict) -> LoraConfig:
    """Build a LoraConfig from its dict form (`to_dict()` or adapter_config.json); ValueError if invalid."""
    try:
        lora = LoraConfig(**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid LoRA config: {err}") from err
    lora.inference_mode = True
    return lora


TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def parse_adapter_weights(buf: bytes | bytearray | memoryview) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file `buf`; ValueError if it is not one.

    The tensors are views into `buf` when it is writable (as what `fetch_adapter` returns):
    nothing is copied. Read-only bytes are copied once, into a buffer torch may
    share."""
    try:
        spans = layout(buf)
    except ValueError as err:
        raise ValueError(f"adapter weights are not valid safetensors: {err}") from err
    if memoryview(buf).readonly:
        buf = bytearray(buf)
    tensors = {}
    for name, span in spans.items():
        dtype, itemsize = TORCH_DTYPES[span.dtype], DTYPE_BYTES[span.dtype]
        if span.nbytes == 0:
            tensors[name] = torch.empty(span.shape, dtype=dtype)
        elif span.offset % itemsize:  # misaligned (the library aligns; others may not): copy
            piece = bytearray(buf[span.offset : span.offset + span.nbytes])
            tensors[name] = torch.frombuffer(piece, dtype=dtype).reshape(span.shape)
        else:
            flat = torch.frombuffer(
                buf, dtype=dtype, count=span.nbytes // itemsize, offset=span.offset
            )
            tensors[name] = flat.reshape(span.shape)
    return tensors


def adapter_name(version: int) -> str:
    """The peft adapter name of a policy version."""
    return f"v{version}"


class VersionPins:
    """Which version new requests start under, and how many requests run under each version.

    Version 0 is the base model. A version other than the current one whose count drops to
    zero is stale: the caller unloads it (peft adapter, or vLLM LoRA and its directory).
    """

    def __init__(self) -> None:
        self.current = 0
        self.in_flight: Counter[int] = Counter()
        self._lock = threading.Lock()

    def acquire(self) -> int:
        """Pin the current version for a request starting now; returns it."""
        with self._lock:
            self.in_flight[self.current] += 1
            return self.current

    def release(self, version: int) -> int | None:
        """Unpin a finished request; returns `version` if it just became stale."""
        with self._lock:
            self.in_flight[version] -= 1
            if self.in_flight[version] > 0:
                return None
            del self.in_flight[version]
            return version if version not in (0, self.current) else None

    def make_current(self, version: int) -> int | None:
        """Send new requests to `version`; returns the old version if it is already stale."""
        with self._lock:
            old, self.current = self.current, version
            return old if old != 0 and old not in self.in_flight else None


class LoraVersions(VersionPins):
    """The adapter versions of one model: which is current, which are in use, which is active."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        """The base model; peft injects LoRA layers into it in place, so it runs any version."""
        self._peft: PeftModel | None = None
        self._active: int | None = 0

    def add(self, version: int, config: LoraConfig, weights: dict[str, torch.Tensor]) -> None:
        """Inject adapter `version` and load its weights; ValueError (and no change) if they don't fit."""
        name = adapter_name(version)
        if self._peft is not None and name in self._peft.peft_config:
            raise ValueError(f"adapter version {version} is already loaded")
        self._active = None  # injecting may change peft's active adapter
        try:
            if self._peft is None:
                self._peft = get_peft_model(self.model, config, adapter_name=name)
            else:
                self._peft.add_adapter(name, config)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"cannot inject adapter version {version}: {err}") from err
        problem = _mismatch(get_peft_model_state_dict(self._peft, adapter_name=name), weights)
        if problem:
            self.delete(version)
            raise ValueError(f"adapter version {version} does not fit the model: {problem}")
        with torch.no_grad():
            result = set_peft_model_state_dict(self._peft, weights, adapter_name=name)
        if result.unexpected_keys:
            self.delete(version)
            raise ValueError(
                f"adapter version {version} has unexpected keys {result.unexpected_keys[:3]}"
            )

    def activate(self, version: int) -> None:
        """Make the model compute under `version` (0: adapters disabled)."""
        if version == self._active:
            return
        if version != 0:
            assert self._peft is not None, "a non-zero version implies an adapter was added"
            self._peft.base_model.enable_adapter_layers()
            self._peft.base_model.set_adapter(adapter_name(version))
        elif self._peft is not None:
            self._peft.base_model.disable_adapter_layers()
        self._active = version

    def delete(self, version: int) -> None:
        """Remove adapter `version` from the model."""
        assert self._peft is not None
        with warnings.catch_warnings():
            # peft warns when the deleted adapter was the active one; activate() resets it anyway.
            warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
            self._peft.delete_adapter(adapter_name(version))
        self._active = None

    def loaded(self) -> list[int]:
        """Versions whose adapters are in the model, oldest first."""
        if self._peft is None:
            return []
        return sorted(int(name[1:]) for name in self._peft.peft_config)


def _mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """Describe how `given` differs from `expected` in keys or shapes; empty when it fits."""
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        return f"missing keys {missing[:3]} ({len(missing)}), unexpected keys {extra[:3]} ({len(extra)})"
    for key, tensor in expected.items():
        if tuple(given[key].shape) != tuple(tensor.shape):
            return f"{key} has shape {tuple(given[key].shape)}, expected {tuple(tensor.shape)}"
    return ""
