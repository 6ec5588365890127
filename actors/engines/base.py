"""The inference engine interface (DESIGN.md section 5): one contract, two implementations.

An engine turns token-id prompts into sampled completions under a LoRA adapter version.
Invariants every implementation keeps (the contract test suite checks them):
- results come back in request order, and each request's `n` completions in sample order;
- `Completion.logprobs[i]` is the log-probability of `token_ids[i]` under the distribution
  it was sampled from (after temperature and top-p), one entry per completion token;
- a request started under adapter version k finishes under version k, even if
  `load_adapter` for k+1 is called while it runs;
- the same `seed` with the same prompt, settings and version gives the same completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class SamplingSettings:
    """How to sample; the same settings are used for rollouts and MC continuations."""

    temperature: float = 1.0
    """Softmax temperature; > 0 (greedy decoding is not a sampling policy PPO can train)."""
    top_p: float = 1.0
    """Nucleus mass in (0, 1]."""
    max_new_tokens: int = 256
    """Upper bound on completion length, in tokens."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion; the completion keeps the stop string."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end a completion (for example EOS); the completion keeps the token."""
    seed: int | None = None
    """Seed for this request; sample j of the request uses a stream derived from (seed, j)."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt to continue `n` times."""

    prompt_token_ids: Sequence[int]
    """The full prefix to continue (prompt plus any kept steps); never empty."""
    n: int = 1
    """Number of independent completions wanted; >= 1."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)


@dataclass(frozen=True, slots=True)
class Completion:
    """One sampled continuation."""

    token_ids: list[int]
    """Generated tokens only (the prompt is not repeated)."""
    logprobs: list[float]
    """One entry per token in `token_ids`: log p(token) under the sampling distribution."""
    finish_reason: FinishReason
    """`stop` (stop string, stop token or EOS) or `length` (hit max_new_tokens)."""
    text: str = ""
    """The decoded completion (for verifiers and stop strings)."""


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """The `n` completions of one request, and the adapter version that produced them."""

    completions: list[Completion]
    policy_version: int
    """Adapter version in use when the request started (0 = base model, no adapter)."""


@runtime_checkable
class Engine(Protocol):
    """What actors and estimators need from an inference engine."""

    @property
    def policy_version(self) -> int:
        """The adapter version that new requests start under (0 before any adapter)."""
        ...

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Sample completions for a batch of requests; one result per request, in order."""
        ...

    async def load_adapter(
        self, version: int, config: dict, safetensors_bytes: bytes | bytearray
    ) -> None:
        """Make `version` the adapter of new requests; running requests keep theirs.

        `config` is the peft LoraConfig as a dict; `safetensors_bytes` holds the adapter
        weights with peft's key names. Raises ValueError for an adapter this engine cannot
        load (the caller reports it; the previous version stays in use).
        """
        ...

    async def close(self) -> None:
        """Release the engine's resources."""
        ...
