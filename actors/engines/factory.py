"""Build the configured inference engine (`[actor.engine]` / `[estimator.engine]`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    """Most sequences decoded together by the transformers engine."""


def check_model_dir(model: str) -> Path:
    """The model directory, or a clear error naming what is missing."""
    if not model:
        raise EngineSetupError(
            "no model given: set engine.model (a directory made by save_pretrained)"
        )
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EngineSetupError(f"model directory not found: {path}")
    if not (path / "config.json").is_file():
        raise EngineSetupError(f"{path} has no config.json: not a save_pretrained model directory")
    return path


def build_engine(cfg: EngineConfig) -> Engine:
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
    raise EngineSetupError(
        f"engine kind {cfg.kind!r} is not available in this build (use 'transformers')"
    )
