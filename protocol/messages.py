"""Every message that crosses Redis, as typed frozen classes (DESIGN.md section 3).

Each class is one wire type. The codec (`protocol.codec`) checks every invariant stated in
the field comments before a consumer ever sees a message, so code that receives one may rely
on them. Common header fields: `id` (producer-assigned, deterministic where possible, the
key of every deduplication), `run` (run id) and `ts` (unix seconds at production).

Per-token arrays (`TokenIds`, `Floats`) travel as little-endian int32 / float32 bytes inside
the msgpack map: ten times faster to check than msgpack lists, and float32 keeps logprobs to
about 1e-7 relative, far inside what PPO needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

SCHEMA_VERSION = 1

TokenIds = Annotated[list[int], "i32"]
"""Token ids; on the wire little-endian int32 bytes; each in [0, vocab_size) when known."""
Floats = Annotated[list[float], "f32"]
"""Finite floats; on the wire little-endian float32 bytes."""
Spans = list[tuple[int, int]]
"""Half-open token ranges [start, end)."""

TrajectoryKind = Literal["fresh", "reset"]
Selection = Literal["advantage", "random", "none"]


@dataclass(frozen=True, slots=True)
class Prompt:
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


@dataclass(frozen=True, slots=True)
class Trajectory:
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


@dataclass(frozen=True, slots=True)
class ResetRequest:
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


@dataclass(frozen=True, slots=True)
class Sample:
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


@dataclass(frozen=True, slots=True)
class AdapterPointer:
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
