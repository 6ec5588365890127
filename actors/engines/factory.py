"""Build the configured inference engine (`[actor.engine]` / `[estimator.engine]`).

`kind = "vllm"` needs the `vllm` extra (`pip install 'gpo[vllm]'`, GPUs); vLLM is imported
only then, so the transformers engine runs without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry

from actors.engines.base import Engine
from protocol.process import UserError


class EngineSetupError(UserError):
    """The engine cannot start with this config (a user mistake: path, kind, settings)."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Which engine runs the policy, and on what."""

    kind: Literal["transformers", "vllm"] = "transformers"
    """`transformers` (CPU and small GPUs) or `vllm` (inference GPUs)."""
    model: str = ""
    """Base model directory (save_pretrained layout, with its tokenizer); required."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights and KV-cache dtype."""
    device: str = "cpu"
    """Torch device of the transformers engine (`cpu`, `cuda:0`, ...)."""
    max_batch_samples: int = 256
    """Most sequences decoded together (vLLM: `max_num_seqs`)."""
    tensor_parallel_size: int = 1
    """vLLM: GPUs the model is sharded over."""
    gpu_memory_utilization: float = 0.9
    """vLLM: fraction of each GPU's memory it may take (weights plus KV cache), in (0, 1]."""
    kv_cache_bytes: int = 0
    """vLLM: KV-cache size in bytes; 0 sizes it from `gpu_memory_utilization`."""
    max_model_len: int = 0
    """vLLM: longest prompt plus completion, in tokens; 0 takes the model's own limit."""
    max_lora_rank: int = 16
    """vLLM: largest adapter rank accepted (1, 8, 16, 32, 64, 128, 256, 320 or 512)."""
    max_loras: int = 2
    """vLLM: adapter versions in one batch; >= 2 so the old version finishes beside the new."""
    adapter_dir: str = ""
    """vLLM: folder (a tmpfs) for adapter directories; empty: /dev/shm (in a container, give
    it room for a few adapter versions: Docker's default is 64 MiB)."""
    enforce_eager: bool = False
    """vLLM: disable CUDA graphs (slower; for debugging)."""

    def __post_init__(self) -> None:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("engine.gpu_memory_utilization must be in (0, 1]")
        if min(self.tensor_parallel_size, self.max_batch_samples) < 1 or self.max_loras < 2:
            raise ValueError(
                "engine.tensor_parallel_size and max_batch_samples must be >= 1, max_loras >= 2"
            )
        if min(self.kv_cache_bytes, self.max_model_len) < 0:
            raise ValueError("engine.kv_cache_bytes and max_model_len must be >= 0")
        if self.max_lora_rank not in _VLLM_LORA_RANKS:
            raise ValueError(f"engine.max_lora_rank must be one of {_VLLM_LORA_RANKS}")


# The ranks vLLM accepts for max_lora_rank (its LoRAConfig check).
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


# The model names `gpo launch` resolves (ops/models.py), and the command that prints each one's
# directory.
MODEL_NAMES = {"bootstrap": "gpo bootstrap", "smollm2": "gpo model smollm2"}


def check_model_dir(model: str) -> Path:
    """The model directory, or a clear error naming what is missing."""
    if not model:
        raise EngineSetupError(
            "no model given: set engine.model (a directory made by save_pretrained)"
        )
    path = Path(model).expanduser()
    if not path.is_dir() and model in MODEL_NAMES:
        raise EngineSetupError(
            f"model {model!r} is a name that gpo launch resolves; a process started on its "
            f"own needs the directory, which `{MODEL_NAMES[model]}` prints"
        )
    if not path.is_dir():
        raise EngineSetupError(f"model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise EngineSetupError(f"{path} has no config.json: not a save_pretrained model directory")
    return path


def build_engine(cfg: EngineConfig, registry: CollectorRegistry | None = None) -> Engine:
    """The engine of `cfg`; a vLLM engine also serves its `vllm:*` series in `registry`."""
    path = check_model_dir(cfg.model)
    if cfg.kind == "transformers":
        from actors.engines.transformers_engine import TransformersEngine, TransformersEngineConfig

        return TransformersEngine(
            TransformersEngineConfig(
                model=str(path),
                dtype=cfg.dtype,
                device=cfg.device,
                max_batch_samples=cfg.max_batch_samples,
            )
        )
    if cfg.kind == "vllm":
        return _build_vllm(cfg, path, registry)
    raise EngineSetupError(f"unknown engine kind {cfg.kind!r} (use 'transformers' or 'vllm')")


def _build_vllm(cfg: EngineConfig, path: Path, registry: CollectorRegistry | None) -> Engine:
    try:
        from actors.engines.vllm import VllmEngine, VllmEngineConfig
    except ImportError as err:
        raise EngineSetupError(
            f"engine kind 'vllm' needs vLLM: pip install 'gpo[vllm]' ({err})"
        ) from err
    options = {"adapter_root": cfg.adapter_dir} if cfg.adapter_dir else {}
    return VllmEngine.start(
        VllmEngineConfig(
            model=str(path),
            dtype=cfg.dtype,
            tensor_parallel_size=cfg.tensor_parallel_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            kv_cache_bytes=cfg.kv_cache_bytes,
            max_model_len=cfg.max_model_len,
            max_num_seqs=cfg.max_batch_samples,
            max_lora_rank=cfg.max_lora_rank,
            max_loras=cfg.max_loras,
            enforce_eager=cfg.enforce_eager,
            **options,
        ),
        registry,
    )
