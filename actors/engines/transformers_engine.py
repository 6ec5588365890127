"""The transformers engine: `Engine` on plain transformers + peft, for CPUs and small GPUs.

Its own decode loop (not `model.generate`) so that prefixes are computed once: the batch's
prompts are prefilled as few KV-cache rows as possible (see `prefix_plan`), every sample then
reads its prompt's row, expanded in the batch dimension, with the attention mask cut after
its prompt. Samples that finish leave the batch, so the last long sample runs alone.

Concurrency: torch work runs in worker threads (`asyncio.to_thread`); every forward pass
holds one model lock and first activates the adapter version its request started under, so
a `load_adapter` during a long generation neither blocks it nor changes its policy.

Sampling: `sampling.py` fixes the distribution (temperature, then top-p renormalisation) and
the per-sample random streams; logprobs are computed in float32 whatever the model dtype.
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.engines.base import (
    Completion,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
)
from actors.engines.lora_versions import LoraVersions, lora_config_from_dict, parse_adapter_weights
from actors.engines.prefix_plan import PrefillPlan, PrefixReuse, plan_prefill
from actors.engines.sampling import sample_rng, sample_tokens, sampling_logprobs

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True, slots=True)
class TransformersEngineConfig:
    """Settings of the transformers engine."""

    model: str
    """Model directory (config, weights, tokenizer); a hub id works only if already cached."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weight and KV-cache dtype; logprobs are always computed in float32."""
    device: str = "cpu"
    """Torch device, e.g. `cpu`, `cuda`, `cuda:1`."""
    prefix_reuse: PrefixReuse = "shared"
    """`shared`: prompts contained in other prompts reuse their KV cache; `request`: only a
    request's n samples share one prefill; `off`: every sample prefills its own prompt."""
    max_batch_samples: int = 256
    """Most samples decoded together; larger batches run as consecutive chunks of requests."""
    stop_at_eos: bool = True
    """End completions at the tokenizer's EOS token in addition to each request's stop ids."""
    attn_implementation: str = "sdpa"
    """transformers attention kernel (`sdpa` or `eager`)."""


@dataclass(slots=True)
class _Sample:
    """Decoding state of one completion."""

    settings: SamplingSettings
    rng: random.Random
    stop_ids: frozenset[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: FinishReason | None = None


class TransformersEngine:
    """`Engine` implementation on transformers and peft (see the module docstring)."""

    def __init__(self, config: TransformersEngineConfig) -> None:
        if config.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
        if config.max_batch_samples < 1:
            raise ValueError("max_batch_samples must be >= 1")
        self.config = config
        self.device = torch.device(config.device)
        self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        model = AutoModelForCausalLM.from_pretrained(
            config.model,
            dtype=_DTYPES[config.dtype],
            attn_implementation=config.attn_implementation,
        )
        model.to(self.device).eval().requires_grad_(False)
        self._versions = LoraVersions(model)
        self._lock = threading.Lock()
        eos = self.tokenizer.eos_token_id
        self._eos_ids = frozenset([eos] if config.stop_at_eos and eos is not None else [])
        self._closed = False

    @property
    def policy_version(self) -> int:
        """The adapter version that new requests start under (0 before any adapter)."""
        return self._versions.current

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Sample completions for a batch of requests; one result per request, in order."""
        if self._closed:
            raise RuntimeError("engine is closed")
        for request in requests:
            _check_request(request)
        if not requests:
            return []
        version = self._versions.acquire()
        # The worker thread unpins the version itself: cancelling this coroutine does not stop
        # the thread, and its adapter must outlive it.
        chunks = await asyncio.to_thread(self._generate_pinned, list(requests), version)
        return [GenerationResult(completions, version) for completions in chunks]

    async def load_adapter(
        self, version: int, config: dict, safetensors_bytes: bytes | bytearray
    ) -> None:
        """Make `version` the adapter of new requests; running requests keep theirs."""
        if self._closed:
            raise RuntimeError("engine is closed")
        if version < 1:
            raise ValueError(f"adapter versions start at 1, got {version}")
        lora = lora_config_from_dict(config)
        weights = parse_adapter_weights(safetensors_bytes)
        await asyncio.to_thread(self._add_adapter, version, lora, weights)

    async def close(self) -> None:
        """Release the model; later calls raise RuntimeError."""
        self._closed = True
        with self._lock:
            self._versions.model = None  # type: ignore[assignment]
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _add_adapter(
        self, version: int, lora: LoraConfig, weights: dict[str, torch.Tensor]
    ) -> None:
        """Inject, switch new requests to it, and drop the old version if nothing runs on it."""
        with self._lock, torch.no_grad():
            self._versions.add(version, lora, weights)
            stale = self._versions.make_current(version)
            if stale is not None:
                self._versions.delete(stale)

    def _generate_pinned(
        self, requests: list[GenerationRequest], version: int
    ) -> list[list[Completion]]:
        """Generate under a pinned version, then unpin it (deleting it if it went stale)."""
        try:
            return self._generate_chunks(requests, version)
        finally:
            stale = self._versions.release(version)
            if stale is not None:
                with self._lock:
                    self._versions.delete(stale)

    def _generate_chunks(
        self, requests: list[GenerationRequest], version: int
    ) -> list[list[Completion]]:
        """Run the requests in chunks of at most `max_batch_samples` samples (a bigger request alone)."""
        results: list[list[Completion]] = []
        chunk: list[GenerationRequest] = []
        for request in requests:
            if chunk and sum(r.n for r in chunk) + request.n > self.config.max_batch_samples:
                results += self._generate_batch(chunk, version)
                chunk = []
            chunk.append(request)
        if chunk:
            results += self._generate_batch(chunk, version)
        return results

    def _generate_batch(
        self, requests: list[GenerationRequest], version: int
    ) -> list[list[Completion]]:
        """Decode one batch: prefill, expand per sample, sample until every sample finished."""
        plan = plan_prefill(
            [r.prompt_token_ids for r in requests],
            [r.n for r in requests],
            self.config.prefix_reuse,
        )
        samples = [
            self._new_sample(r.sampling, seed, j)
            for r, seed in zip(requests, _seeds(requests), strict=True)
            for j in range(r.n)
        ]
        with torch.inference_mode():
            self._decode(plan, samples, version)
        completions = [
            Completion(
                token_ids=s.tokens,
                logprobs=s.logprobs,
                finish_reason=s.finish or "length",
                text=self.tokenizer.decode(s.tokens, skip_special_tokens=True),
            )
            for s in samples
        ]
        out, start = [], 0
        for request in requests:
            out.append(completions[start : start + request.n])
            start += request.n
        return out

    def _new_sample(self, settings: SamplingSettings, seed: int, index: int) -> _Sample:
        return _Sample(
            settings=settings,
            rng=sample_rng(seed, index),
            stop_ids=frozenset(settings.stop_token_ids) | self._eos_ids,
        )

    def _forward(self, version: int, **inputs):
        with self._lock:
            self._versions.activate(version)
            return self._versions.model(**inputs, use_cache=True)

    def _decode(self, plan: PrefillPlan, samples: list[_Sample], version: int) -> None:
        """The decode loop: fills each sample's tokens, logprobs and finish reason."""
        device = self.device
        # 1. Prefill the plan's rows, left padded; logits at every sample's last prompt token.
        width = max(len(row) for row in plan.rows)
        pads = [width - len(row) for row in plan.rows]
        ids = torch.tensor(
            [[0] * p + list(row) for p, row in zip(pads, plan.rows, strict=True)], device=device
        )
        row_mask = torch.tensor(
            [[0] * p + [1] * len(row) for p, row in zip(pads, plan.rows, strict=True)],
            device=device,
        )
        last_col = [
            pads[r] + n - 1 for r, n in zip(plan.sample_row, plan.sample_prompt_len, strict=True)
        ]
        keep_cols = sorted(set(last_col))
        out = self._forward(
            version,
            input_ids=ids,
            attention_mask=row_mask,
            position_ids=(row_mask.cumsum(-1) - 1).clamp(min=0),
            logits_to_keep=torch.tensor(keep_cols, device=device),
        )
        col_of = {c: i for i, c in enumerate(keep_cols)}
        rows = torch.tensor(plan.sample_row, device=device)
        logits = out.logits[rows, torch.tensor([col_of[c] for c in last_col], device=device)]
        # 2. One cache row per sample; mask the row's tokens past the sample's own prompt.
        cache = out.past_key_values
        cache.batch_select_indices(rows)
        cols = torch.arange(width, device=device)
        mask = row_mask[rows] * (cols[None, :] <= torch.tensor(last_col, device=device)[:, None])
        positions = torch.tensor(plan.sample_prompt_len, device=device)
        temperature = torch.tensor([s.settings.temperature for s in samples], device=device)
        top_p = torch.tensor([s.settings.top_p for s in samples], device=device)
        active = list(range(len(samples)))
        # 3. Sample, record, drop finished rows, run one step for the rest.
        while True:
            uniforms = torch.tensor([samples[i].rng.random() for i in active], dtype=torch.float64)
            tokens, logprobs = sample_tokens(
                sampling_logprobs(logits, temperature, top_p), uniforms.to(device)
            )
            keep = [
                row
                for row, (i, tok, lp) in enumerate(
                    zip(active, tokens.tolist(), logprobs.tolist(), strict=True)
                )
                if not self._append(samples[i], tok, lp)
            ]
            if not keep:
                return
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, positions, tokens = mask[index], positions[index], tokens[index]
                temperature, top_p = temperature[index], top_p[index]
                active = [active[row] for row in keep]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            out = self._forward(
                version,
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=positions[:, None],
                past_key_values=cache,
            )
            logits, positions = out.logits[:, -1], positions + 1

    def _append(self, sample: _Sample, token: int, logprob: float) -> bool:
        """Record a sampled token; returns True when the sample is finished."""
        sample.tokens.append(token)
        sample.logprobs.append(logprob)
        settings = sample.settings
        if token in sample.stop_ids or self._hit_stop_string(sample):
            sample.finish = "stop"
        elif len(sample.tokens) >= settings.max_new_tokens:
            sample.finish = "length"
        return sample.finish is not None

    def _hit_stop_string(self, sample: _Sample) -> bool:
        """Whether the completion's text now contains a stop string (checked after every token)."""
        if not sample.settings.stop:
            return False
        text = self.tokenizer.decode(sample.tokens, skip_special_tokens=True)
        return any(stop in text for stop in sample.settings.stop)


_SEEDS = random.SystemRandom()


def _seeds(requests: list[GenerationRequest]) -> list[int]:
    """Each request's seed; a fresh random one where the request has none."""
    return [
        r.sampling.seed if r.sampling.seed is not None else _SEEDS.getrandbits(63) for r in requests
    ]


def _check_request(request: GenerationRequest) -> None:
    s = request.sampling
    if not request.prompt_token_ids:
        raise ValueError("prompt_token_ids must not be empty")
    if request.n < 1:
        raise ValueError(f"n must be >= 1, got {request.n}")
    if not s.temperature > 0:
        raise ValueError(f"temperature must be > 0, got {s.temperature}")
    if not 0 < s.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {s.top_p}")
    if any(not stop for stop in s.stop):
        raise ValueError("stop strings must not be empty")
    if s.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {s.max_new_tokens}")
