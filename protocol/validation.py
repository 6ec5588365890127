"""What a message must be to be accepted: the decoder's limits, the refusal it raises, the
check of each field's wire value (`FIELD_CHECKS`, by wire kind), and the checks across fields
(`check_invariants`) and of ranges (`check_ranges`) run on every decoded message.
`protocol.codec` applies them; this module holds the rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.messages import AdapterPointer, Message, Prompt, ResetRequest, Sample, Trajectory

_I32 = np.dtype("<i4")
_U32 = np.dtype("<u4")
_F32 = np.dtype("<f4")


class ProtocolError(ValueError):
    """A message that cannot be accepted. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """What a decoder accepts."""

    max_bytes: int = 16 * 1024 * 1024
    """Largest encoded message, checked before unpacking."""
    vocab_size: int | None = None
    """When known, every token id must lie in [0, vocab_size)."""
    max_reset_n: int = 64
    """Most rollouts one reset request may ask for."""
    max_adapter_bytes: int = 4 * 1024**3
    """Largest adapter a pointer may announce, in bytes."""


LORA_FIELDS = frozenset({"r", "lora_alpha", "lora_dropout", "target_modules", "bias", "task_type"})
"""The LoraConfig fields an adapter pointer may set: LoRA's own shape."""
LORA_INERT_FIELDS = frozenset(
    {
        "peft_type",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "init_lora_weights",
        "megatron_core",
        "qalora_group_size",
    }
)
"""Fields of peft's `LoraConfig.to_dict()` that carry a value by default but change nothing
when given weights are loaded (provenance, the initialiser, settings of features that stay
off). Every other field must be unset (None, False or empty): a pointer may not ask peft for
more than LoRA (`modules_to_save`, layer patterns, DoRA, ...)."""
MAX_LORA_RANK = 1024
MAX_LORA_ALPHA = 1e4
LOGPROB_SLACK = 1e-4
"""A logprob above this is refused (a probability above 1); the slack covers rounding."""


DEFAULT_LIMITS = CodecLimits()


# ---------------------------------------------------------------- field checks


def _int(value: Any, limits: CodecLimits) -> int:
    if type(value) is not int:
        raise ProtocolError("bad_field_type", f"expected int, got {type(value).__name__}")
    return value


def _float(value: Any, limits: CodecLimits) -> float:
    if type(value) not in (float, int):
        raise ProtocolError("bad_field_type", f"expected float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ProtocolError("bad_value", "not finite")
    return float(value)


def _str(value: Any, limits: CodecLimits) -> str:
    if type(value) is not str:
        raise ProtocolError("bad_field_type", f"expected str, got {type(value).__name__}")
    return value


def _strs(value: Any, limits: CodecLimits) -> list[str]:
    if type(value) is not list or any(type(s) is not str for s in value):
        raise ProtocolError("bad_field_type", "expected a list of str")
    return value


def _config(value: Any, limits: CodecLimits, nested: bool = False) -> dict:
    """A JSON-like config map (peft's LoraConfig.to_dict()): string keys; values are scalars,
    lists of scalars, or (one level down, like `rank_pattern`) maps of those."""
    if type(value) is not dict:
        raise ProtocolError("bad_field_type", f"expected map, got {type(value).__name__}")
    for k, v in value.items():
        if type(k) is not str:
            raise ProtocolError("bad_key", "config keys must be strings")
        if type(v) is dict and not nested:
            _config(v, limits, nested=True)
            continue
        items = v if type(v) is list else [v]
        if any(x is not None and type(x) not in (int, float, str, bool) for x in items):
            raise ProtocolError(
                "bad_field_type", "config values must be scalars, lists of scalars or maps of those"
            )
    return value


def _spans(value: Any, limits: CodecLimits) -> list[tuple[int, int]]:
    arr = _array(value, _I32)  # [start0, end0, start1, end1, ...]
    if arr.size % 2:
        raise ProtocolError("bad_length", "spans need an even number of int32")
    pairs = iter(arr.tolist())
    return list(zip(pairs, pairs))


def _array(value: Any, dtype: np.dtype) -> np.ndarray:
    if type(value) is not bytes:
        raise ProtocolError(
            "bad_field_type", f"expected {dtype.str} bytes, got {type(value).__name__}"
        )
    if len(value) % dtype.itemsize:
        raise ProtocolError(
            "bad_length", f"{len(value)} bytes is not a whole number of {dtype.str}"
        )
    return np.frombuffer(value, dtype=dtype)


def _i32(value: Any, limits: CodecLimits) -> np.ndarray:
    arr = _array(value, _I32)
    # one pass: read as unsigned, a negative id is >= 2**31, above any vocabulary
    bound = 2**31 if limits.vocab_size is None else min(limits.vocab_size, 2**31)
    if arr.size and arr.view(_U32).max() >= bound:
        raise ProtocolError("token_out_of_range", f"ids span [{arr.min()}, {arr.max()}]")
    return arr


def _f32(value: Any, limits: CodecLimits) -> np.ndarray:
    arr = _array(value, _F32)
    # one pass: a NaN or an infinity makes the sum non-finite, and a float64 sum of finite
    # float32 values cannot overflow (16 MiB of 3.4e38 sums to 1.4e45)
    if not math.isfinite(arr.sum(dtype=np.float64)):
        raise ProtocolError("bad_value", "not finite")
    return arr


FIELD_CHECKS = {
    "int": _int,
    "float": _float,
    "str": _str,
    "strs": _strs,
    "dict": _config,
    "spans": _spans,
    "i32": _i32,
    "f32": _f32,
}
"""Wire kind (`protocol.codec`'s field schemas) -> the check of a field of that kind."""


# ---------------------------------------------------------------- cross-field invariants


def _require(ok: bool, reason: str, detail: str) -> None:
    if not ok:
        raise ProtocolError(reason, detail)


def check_invariants(msg: Message) -> None:
    _require(bool(msg.id), "bad_value", "empty id")
    if hasattr(msg, "policy_version"):
        _require(msg.policy_version >= 0, "bad_value", "policy_version < 0")
    if isinstance(msg, Prompt):
        _require(len(msg.token_ids) > 0, "bad_value", "empty prompt token_ids")
        _require(msg.epoch >= 0, "bad_value", "epoch < 0")
    elif isinstance(msg, Trajectory):
        n = len(msg.completion_token_ids)
        _require(n > 0, "bad_value", "empty completion")
        _require(
            len(msg.logprobs) == n,
            "length_mismatch",
            f"logprobs {len(msg.logprobs)} != completion {n}",
        )
        _require(
            0 < msg.prompt_len <= len(msg.prefix_token_ids),
            "bad_value",
            "prompt_len outside prefix",
        )
        _require(0.0 <= msg.reward <= 1.0, "bad_value", "reward outside [0, 1]")
        _require(msg.kind in ("fresh", "reset"), "bad_value", f"kind {msg.kind!r}")
        is_reset = msg.kind == "reset"
        _require(
            (msg.parent_id is not None) == is_reset
            and (msg.reset_step is not None) == is_reset
            and (msg.reset_value is not None) == is_reset,
            "bad_value",
            "parent_id, reset_step and reset_value are set exactly for reset trajectories",
        )
        _require(
            msg.reset_value_count >= 0 and (is_reset or msg.reset_value_count == 0),
            "bad_value",
            "reset_value_count must be >= 0, and 0 for fresh trajectories",
        )
        _require(
            _partitions(msg.step_spans, n),
            "bad_spans",
            "step spans do not partition the completion",
        )
    elif isinstance(msg, ResetRequest):
        t = len(msg.advantages)
        _require(
            len(msg.step_values) == t + 1, "length_mismatch", "step_values must be advantages + 1"
        )
        _require(0 <= msg.critical_step < t, "bad_value", "critical_step outside the steps")
        _require(msg.n >= 1, "bad_value", "n < 1")
        _require(msg.value_count >= 0, "bad_value", "value_count < 0")
        _require(
            0 < msg.prompt_len <= len(msg.prefix_token_ids),
            "bad_value",
            "prompt_len outside prefix",
        )
        _require(
            msg.selection in ("advantage", "random"), "bad_value", f"selection {msg.selection!r}"
        )
    elif isinstance(msg, Sample):
        n = len(msg.token_ids)
        _require(n > 0, "bad_value", "empty token_ids")
        lengths = [len(msg.loss_mask), len(msg.logprobs), len(msg.advantages)]
        if len(msg.returns):
            lengths.append(len(msg.returns))
        _require(
            all(x == n for x in lengths),
            "length_mismatch",
            f"per-token arrays {lengths} vs tokens {n}",
        )
        _require(
            not msg.loss_mask.size or msg.loss_mask.view(_U32).max() <= 1,
            "bad_value",
            "loss_mask must be 0/1",
        )
        _require(0.0 <= msg.reward <= 1.0, "bad_value", "reward outside [0, 1]")
        _require(msg.kind in ("fresh", "reset"), "bad_value", f"kind {msg.kind!r}")
        _require(msg.baseline_count >= 0, "bad_value", "baseline_count < 0")
    elif isinstance(msg, AdapterPointer):
        _require(msg.version >= 1, "bad_value", "version < 1")
        _require(msg.size > 0 and len(msg.chunk_keys) > 0, "bad_value", "empty adapter")
        _require(
            len(msg.sha256) == 64 and all(c in "0123456789abcdef" for c in msg.sha256),
            "bad_value",
            "sha256 must be 64 lowercase hex digits",
        )


def _unset(value: object) -> bool:
    """A LoraConfig field that asks peft for nothing: None, False or empty. By identity and
    type, so that 0 (equal to False, but `layers_to_transform = 0` means layer 0) is set."""
    if value is None or value is False:
        return True
    return isinstance(value, (str, list, tuple, dict)) and len(value) == 0


def _in(values: np.ndarray, lo: float, hi: float) -> bool:
    """Every entry of a decoded per-token or per-step array in [lo, hi]. The decoder has
    refused NaN already (`_f32`), so the extremes decide."""
    return not values.size or (lo <= values.min() and values.max() <= hi)


def _at_most(values: np.ndarray, hi: float) -> bool:
    return not values.size or values.max() <= hi


def check_ranges(msg: Message, limits: CodecLimits) -> None:
    """Values that decode but are absurd: rewards, values and returns outside [0, 1],
    advantages outside [-1, 1], logprobs above 0, oversized requests and adapters, and LoRA
    configs with fields beyond LoRA's own shape (checked on decode only, where a message
    comes from outside)."""
    if isinstance(msg, Trajectory):
        _require(_at_most(msg.logprobs, LOGPROB_SLACK), "bad_value", "logprob > 0")
        if msg.reset_value is not None:
            _require(0.0 <= msg.reset_value <= 1.0, "bad_value", "reset_value outside [0, 1]")
    elif isinstance(msg, ResetRequest):
        _require(_in(msg.step_values, 0, 1), "bad_value", "step_values outside [0, 1]")
        _require(0.0 <= msg.value <= 1.0, "bad_value", "value outside [0, 1]")
        _require(_in(msg.advantages, -1, 1), "bad_value", "advantages outside [-1, 1]")
        _require(msg.n <= limits.max_reset_n, "bad_value", f"n > {limits.max_reset_n}")
    elif isinstance(msg, Sample):
        _require(_at_most(msg.logprobs, LOGPROB_SLACK), "bad_value", "logprob > 0")
        _require(_in(msg.advantages, -1, 1), "bad_value", "advantages outside [-1, 1]")
        _require(_in(msg.step_values, 0, 1), "bad_value", "step_values outside [0, 1]")
        _require(_in(msg.returns, 0, 1), "bad_value", "returns outside [0, 1]")
        _require(0.0 <= msg.baseline_value <= 1.0, "bad_value", "baseline_value outside [0, 1]")
    elif isinstance(msg, AdapterPointer):
        extra = sorted(
            k
            for k, v in msg.lora_config.items()
            if k not in LORA_FIELDS and k not in LORA_INERT_FIELDS and not _unset(v)
        )
        _require(not extra, "bad_value", f"lora_config sets fields beyond LoRA's: {extra[:5]}")
        peft_type = msg.lora_config.get("peft_type", "LORA")
        _require(peft_type == "LORA", "bad_value", f"lora_config.peft_type {peft_type!r}")
        # peft's defaults stand in for an absent rank or alpha (r = 8, alpha = 8)
        r, alpha = msg.lora_config.get("r", 8), msg.lora_config.get("lora_alpha", 8)
        _require(
            type(r) is int and 1 <= r <= MAX_LORA_RANK, "bad_value", "lora_config.r out of range"
        )
        _require(
            type(alpha) in (int, float) and 0 < alpha <= MAX_LORA_ALPHA,
            "bad_value",
            "lora_config.lora_alpha out of range",
        )
        _require(len(msg.chunk_keys) <= msg.size, "bad_value", "more chunks than bytes")
        _require(
            msg.size <= limits.max_adapter_bytes,
            "bad_value",
            f"adapter size {msg.size} > cap {limits.max_adapter_bytes}",
        )


def _partitions(spans: list[tuple[int, int]], n: int) -> bool:
    pos = 0
    for start, end in spans:
        if start != pos or end <= start:
            return False
        pos = end
    return pos == n
