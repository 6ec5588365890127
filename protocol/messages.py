"""Every message that crosses Redis, as typed frozen classes (DESIGN.md section 3).

Each class is one wire type. The codec (`protocol.codec`) checks every invariant stated in
the field comments before a consumer ever sees a message, so code that receives one may rely
on them. Common header fields: `id` (producer-assigned, deterministic where possible, the
key of every deduplication), `run` (run id) and `ts` (unix seconds at production).

Per-token arrays (`TokenIds`, `Floats`) are numpy arrays (int32 / float32; lists are
converted at construction) and travel as little-endian bytes inside the msgpack map: no
per-element Python work on either side, zero-copy into torch on the learner, and float32
keeps logprobs to about 1e-7 relative, far inside what PPO needs. Decoded arrays are
read-only views of the received bytes, as frozen as the message around them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import numpy as np

SCHEMA_VERSION = 2
DTYPES = {"i32": np.dtype("<i4"), "f32": np.dtype("<f4")}

TokenIds = Annotated[np.ndarray, "i32"]
"""Token ids, int32; each in [0, vocab_size) when the vocabulary is known."""
Floats = Annotated[np.ndarray, "f32"]
"""Finite floats, float32."""
Spans = list[tuple[int, int]]
"""Half-open token ranges [start, end)."""

TrajectoryKind = Literal["fresh", "reset"]
Selection = Literal["advantage", "random", "none"]


class _Wire:
    """Shared behaviour of wire types: array fields as numpy, equality by value."""

    __slots__ = ()

    def __post_init__(self) -> None:
        for name, dtype in _array_fields(type(self)):
            value = getattr(self, name)
            if not (isinstance(value, np.ndarray) and value.dtype == dtype and value.ndim == 1):
                object.__setattr__(self, name, np.asarray(value, dtype=dtype).reshape(-1))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True

    __hash__ = None


_ARRAY_FIELDS: dict[type, tuple[tuple[str, np.dtype], ...]] = {}


def _array_fields(cls: type) -> tuple[tuple[str, np.dtype], ...]:
    if cls not in _ARRAY_FIELDS:
        hints = typing.get_type_hints(cls, include_extras=True)
        _ARRAY_FIELDS[cls] = tuple(
            (name, DTYPES[typing.get_args(h)[1]])
            for name, h in hints.items()
            if typing.get_origin(h) is Annotated
        )
    return _ARRAY_FIELDS[cls]


@dataclass(frozen=True, slots=True, eq=False)
class Prompt(_Wire):
    """A task prompt for the actors (stream `prompts`, group `actors`)."""

    TYPE: ClassVar[str] = "prompt"
    id: str
    """`<split>:<epoch>:<index>` from the feeder: the same prompt in the same epoch keeps its id."""
    run: str
    ts: float
    task: str
    """Task name, as the task plugin reports it."""
    text: str
    token_ids: TokenIds
    """The prompt tokenized with the policy's tokenizer; not empty."""
    answer: str
    """Reference answer handed to the verifier."""
    epoch: int
    """Pass over the training split that produced this prompt; >= 0."""


@dataclass(frozen=True, slots=True, eq=False)
class Trajectory(_Wire):
    """One rollout with its reward (stream `trajectories`, group `estimators`)."""

    TYPE: ClassVar[str] = "trajectory"
    id: str
    """`<prompt id or reset id>/<sample index>`: deterministic, so a redelivery reproduces it."""
    run: str
    ts: float
    prompt_id: str
    task: str
    answer: str
    """Reference answer, so the estimator can score MC continuations without the prompt."""
    kind: TrajectoryKind
    parent_id: str | None
    """For `reset`: the trajectory whose critical step was regenerated; None for `fresh`."""
    reset_step: int | None
    """For `reset`: index of the critical step that was regenerated; None for `fresh`."""
    reset_value: float | None
    """For `reset`: V(s_m), the MC value of the reset state; None for `fresh`."""
    prompt_len: int
    """Number of prompt tokens at the start of `prefix_token_ids`; 1 <= prompt_len <= len(prefix)."""
    prefix_token_ids: TokenIds
    """Prompt plus any kept steps; never trained on."""
    completion_token_ids: TokenIds
    """Generated tokens; not empty."""
    logprobs: Floats
    """Behaviour logprob of each completion token: len(logprobs) == len(completion_token_ids)."""
    step_spans: Spans
    """Reasoning steps as token ranges over the completion; they partition it in order."""
    reward: float
    """Verifier reward in [0, 1]."""
    policy_version: int
    """Adapter version that generated the completion; >= 0 (0 = base model)."""
    actor: str
    """Consumer name of the actor that generated it."""
    gen_seconds: float
    """Wall time of the generate call that produced it; >= 0."""
    reset_value_count: int = 0
    """For `reset`: the MC continuations V(s_m) averages (the request's `value_count`); 0 for
    `fresh`, or when they are not independent of this rollout's siblings."""


@dataclass(frozen=True, slots=True, eq=False)
class ResetRequest(_Wire):
    """Regenerate from just before a critical step (stream `resets`, group `actors`)."""

    TYPE: ClassVar[str] = "reset"
    id: str
    """`reset:<trajectory id>`: one reset per trajectory, whoever estimates it."""
    run: str
    ts: float
    trajectory_id: str
    prompt_id: str
    task: str
    answer: str
    critical_step: int
    """Index m of the step to regenerate; 0 <= m < len(advantages)."""
    prompt_len: int
    """Number of prompt tokens at the start of `prefix_token_ids`."""
    prefix_token_ids: TokenIds
    """Prompt plus steps 0..m-1 of the trajectory: the state s_m."""
    step_values: Floats
    """V(s_0) .. V(s_T): MC values at each step boundary, then the trajectory's reward."""
    advantages: Floats
    """A_i = V(s_{i+1}) - V(s_i): len(advantages) == len(step_values) - 1."""
    value: float
    """V(s_m), the value of the reset state, carried to the reset rollouts' advantages."""
    n: int
    """Number of reset rollouts wanted; >= 1."""
    policy_version: int
    selection: Selection
    """How the step was chosen: `advantage` (GPO) or `random` (baseline)."""
    value_count: int = 0
    """Continuations that `value` averages (K at s_m); >= 0. The learner pools them with
    the reset rollouts' own rewards into a leave-one-out baseline."""


@dataclass(frozen=True, slots=True, eq=False)
class Sample(_Wire):
    """A training sample, ready for the learner without recomputation (stream `samples`)."""

    TYPE: ClassVar[str] = "sample"
    id: str
    """Equal to the trajectory id: the learner's dedup key."""
    run: str
    ts: float
    prompt_id: str
    kind: TrajectoryKind
    token_ids: TokenIds
    """Prefix then completion tokens."""
    loss_mask: TokenIds
    """1 where the token is trained on (completion), 0 on prefix; same length as token_ids."""
    logprobs: Floats
    """Behaviour logprob per token (0 on prefix); same length as token_ids."""
    advantages: Floats
    """Per-token advantage (0 on prefix); same length as token_ids."""
    returns: Floats
    """Per-token return for the critic mode; empty when not used, else same length as token_ids."""
    step_values: Floats
    """The estimator's V(s_0)..V(s_T) (empty for reset samples); for logging and `mc` mode."""
    reward: float
    """Verifier reward in [0, 1]."""
    policy_version: int
    group: str = ""
    """Baseline group: samples with equal `group` were drawn from one state. Fresh samples:
    the prompt id; reset samples: the reset request id (one group per reset state, never
    mixed with the prompt's fresh rollouts). Empty means the prompt id."""
    baseline_value: float = 0.0
    """Reset samples: V(s_m), the MC value of the reset state; 0 for fresh samples."""
    baseline_count: int = 0
    """Reset samples: the continuations `baseline_value` averages that are not among the
    group's own rollouts (K at s_m; 0 when the reset rollouts are those continuations);
    >= 0, 0 for fresh samples."""


@dataclass(frozen=True, slots=True, eq=False)
class AdapterPointer(_Wire):
    """A published LoRA adapter version (stream `weights`, read in full by everyone)."""

    TYPE: ClassVar[str] = "adapter"
    id: str
    """`adapter:<version>`."""
    run: str
    ts: float
    version: int
    """Strictly increasing per run; >= 1."""
    base_model: str
    """Identifier of the base model the adapter applies to."""
    lora_config: dict
    """peft LoraConfig fields (string keys; values scalars or lists of scalars)."""
    sha256: str
    """Hex sha256 of the whole safetensors blob (64 lowercase hex digits)."""
    size: int
    """Length of the safetensors blob in bytes; > 0."""
    chunk_keys: list[str]
    """Redis keys holding the blob's consecutive chunks; not empty."""


MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls for cls in (Prompt, Trajectory, ResetRequest, Sample, AdapterPointer)
}
Message = Prompt | Trajectory | ResetRequest | Sample | AdapterPointer
