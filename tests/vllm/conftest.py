"""Tests that need a real vLLM: run by `make test-vllm` in its own environment.

The main suite (`make test`) passes `--ignore=tests/vllm`: its environment has no vLLM.
Here vLLM must import; a missing vLLM is an error, not a skip, so `make test-vllm` can
never pass without running these tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import vllm  # noqa: F401  (fails collection loudly where vLLM is missing)

from ops.tiny_policy.tiny_model import TinyModelConfig, build_tiny_model_dir

# vLLM's CPU attention supports head sizes 32, 64, 80, ...: the default tiny model's head
# size of 8 cannot run there, so these tests use a tiny model with head size 32.
VLLM_TINY = TinyModelConfig(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=128)

# A small KV cache: the default takes a share of the machine's memory.
KV_CACHE_BYTES = 128 << 20

# vLLM binds OpenMP threads to cores by default; CI shares its 2 cores with other work.
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model_vllm"), VLLM_TINY)


def vllm_engine(model_dir, registry=None, **engine):
    """A float32 vLLM engine on `model_dir` through the factory, as gpo-actor builds it, with
    the tests' small KV cache; `engine` overrides EngineConfig fields."""
    from actors.engines.factory import EngineConfig, build_engine

    fields = {"kv_cache_bytes": KV_CACHE_BYTES, "max_lora_rank": 8, **engine}
    config = EngineConfig(kind="vllm", model=str(model_dir), dtype="float32", **fields)
    return build_engine(config, registry)
