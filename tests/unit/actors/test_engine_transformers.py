"""The transformers engine: the shared engine contract plus what only this engine promises.

Engine-specific checks: EOS ends completions by default, sample j of a request does not
depend on the rest of the batch, every prefix-reuse mode gives the same completions,
concurrent requests on different adapter versions, stale adapters are deleted, bad requests
are refused.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

# `tests` is not a package on the import path; the contract module lives next to this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from actors.engines.base import GenerationRequest, SamplingSettings  # noqa: E402
from actors.engines.transformers_engine import (  # noqa: E402
    TransformersEngine,
    TransformersEngineConfig,
)
from ops.tiny_policy.tiny_model import TinyModelConfig, build_tiny_model_dir  # noqa: E402
from tests.engine_contract import *  # noqa: E402, F403
from tests.engine_contract import PROMPTS, Learner  # noqa: E402


@pytest.fixture(scope="module")
def engine_factory():
    return lambda model_dir: TransformersEngine(TransformersEngineConfig(model=str(model_dir)))


def _requests(tokenizer, n: int = 2, max_new_tokens: int = 10) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            tokenizer(p)["input_ids"],
            n=n,
            sampling=SamplingSettings(max_new_tokens=max_new_tokens, seed=7),
        )
        for p in PROMPTS
    ]


def test_eos_ends_completion_unless_disabled(tmp_path, runner):
    model_dir = build_tiny_model_dir(tmp_path, TinyModelConfig(eos_logit_zero=False))
    request = GenerationRequest(
        [5, 6, 7], n=16, sampling=SamplingSettings(max_new_tokens=64, seed=1)
    )
    stopping = TransformersEngine(TransformersEngineConfig(model=str(model_dir)))
    running_on = TransformersEngine(
        TransformersEngineConfig(model=str(model_dir), stop_at_eos=False)
    )
    eos = stopping.tokenizer.eos_token_id
    stopped = runner.run(stopping.generate([request]))[0].completions
    continued = runner.run(running_on.generate([request]))[0].completions
    ended_by_eos = [i for i, c in enumerate(stopped) if c.finish_reason == "stop"]
    assert ended_by_eos, "no sample drew EOS; use more samples"
    for i, completion in enumerate(stopped):
        assert completion.token_ids.count(eos) == (1 if i in ended_by_eos else 0)
        if i in ended_by_eos:
            assert completion.token_ids[-1] == eos
            assert continued[i].token_ids[: len(completion.token_ids)] == completion.token_ids
            assert len(continued[i].token_ids) > len(completion.token_ids)
        else:
            assert continued[i].token_ids == completion.token_ids


@pytest.fixture
def own_learner(tiny_model_dir) -> Learner:
    """A learner for a fresh engine (the module's `learner` tracks the shared engine's versions)."""
    return Learner(tiny_model_dir)


def _engine(model_dir, **options) -> TransformersEngine:
    return TransformersEngine(TransformersEngineConfig(model=str(model_dir), **options))


def _estimator_batch(tokenizer) -> list[GenerationRequest]:
    """Nested prefixes of one trajectory, several samples each (the estimator's shape)."""
    ids = tokenizer("what is 12+30? 12+30=42.")["input_ids"]
    return [
        GenerationRequest(
            ids[:k], n=3, sampling=SamplingSettings(max_new_tokens=8, seed=k, temperature=0.9)
        )
        for k in (4, 9, 15, 24)
    ]


def _tokens(results) -> list[list[list[int]]]:
    return [[c.token_ids for c in r.completions] for r in results]


def test_prefix_reuse_modes_and_chunking_give_the_same_completions(
    tiny_model_dir, runner, tokenizer
):
    requests = _estimator_batch(tokenizer) + _requests(tokenizer)
    variants = [{"prefix_reuse": m} for m in ("shared", "request", "off")] + [
        {"max_batch_samples": 4}
    ]
    outputs = [runner.run(_engine(tiny_model_dir, **v).generate(requests)) for v in variants]
    for other in outputs[1:]:
        assert _tokens(other) == _tokens(outputs[0])
        for a, b in zip(other, outputs[0], strict=True):
            for ca, cb in zip(a.completions, b.completions, strict=True):
                assert ca.logprobs == pytest.approx(cb.logprobs, abs=1e-4)


def test_sample_j_does_not_depend_on_the_rest_of_the_batch(tiny_model_dir, runner, tokenizer):
    engine = _engine(tiny_model_dir)
    alone = runner.run(engine.generate([_estimator_batch(tokenizer)[1]]))
    crowded = runner.run(engine.generate(_requests(tokenizer) + _estimator_batch(tokenizer)))
    assert _tokens(alone)[0] == _tokens(crowded)[len(PROMPTS) + 1]


def test_stale_adapters_are_deleted_after_their_last_request(
    tiny_model_dir, runner, own_learner, tokenizer
):
    learner = own_learner
    engine = _engine(tiny_model_dir)
    runner.run(learner.publish(engine, seed=41))
    request = GenerationRequest(
        tokenizer("abc")["input_ids"], n=8, sampling=SamplingSettings(max_new_tokens=96)
    )

    async def overlap() -> list[int]:
        running = asyncio.create_task(engine.generate([request]))
        await asyncio.sleep(0.02)
        await learner.publish(engine, seed=42)
        during = engine._versions.loaded()
        result = await running
        assert result[0].policy_version == 1
        return during

    assert runner.run(overlap()) == [1, 2]
    assert engine._versions.loaded() == [2]


def test_bad_first_adapter_leaves_base_model_usable(tiny_model_dir, runner, own_learner, tokenizer):
    learner = own_learner
    engine = _engine(tiny_model_dir)
    config, weights, _ = learner.make_adapter(seed=51)
    with pytest.raises(ValueError):
        runner.run(engine.load_adapter(1, {**config, "r": 8}, weights))
    with pytest.raises(ValueError):
        runner.run(
            engine.load_adapter(1, {**config, "target_modules": ["no_such_module"]}, weights)
        )
    assert engine.policy_version == 0
    request = GenerationRequest(
        tokenizer("abc")["input_ids"], n=2, sampling=SamplingSettings(max_new_tokens=8)
    )
    base = runner.run(engine.generate([request]))[0]
    assert base.policy_version == 0
    for completion in base.completions:
        expected = learner.logprobs(
            0, request.prompt_token_ids, completion.token_ids, request.sampling
        )
        assert completion.logprobs == pytest.approx(expected, abs=1e-4)
    runner.run(engine.load_adapter(1, config, weights))
    with pytest.raises(ValueError):  # a version name is never reused while loaded
        runner.run(engine.load_adapter(1, config, weights))
    assert engine.policy_version == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_token_ids": []},
        {"n": 0},
        {"sampling": SamplingSettings(temperature=0.0)},
        {"sampling": SamplingSettings(top_p=0.0)},
        {"sampling": SamplingSettings(max_new_tokens=0)},
        {"sampling": SamplingSettings(stop=("",))},
    ],
)
def test_invalid_requests_are_refused(engine, runner, bad):
    request = GenerationRequest(**{"prompt_token_ids": [5, 6], **bad})
    with pytest.raises(ValueError):
        runner.run(engine.generate([request]))


def test_empty_batch_gives_no_results(engine, runner):
    assert runner.run(engine.generate([])) == []


def test_bfloat16_engine_samples_close_to_float32_logprobs(
    tiny_model_dir, runner, learner, tokenizer
):
    engine = _engine(tiny_model_dir, dtype="bfloat16")
    request = _requests(tokenizer, n=2, max_new_tokens=8)[0]
    result = runner.run(engine.generate([request]))[0]
    for completion in result.completions:
        expected = learner.logprobs(
            0, request.prompt_token_ids, completion.token_ids, request.sampling
        )
        assert completion.logprobs == pytest.approx(expected, abs=0.1)
