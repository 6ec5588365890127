"""The transformers engine: the shared engine contract plus what only this engine promises.

Engine-specific checks: EOS ends completions by default, sample j of a request does not
depend on the rest of the batch, every prefix-reuse mode gives the same completions,
concurrent requests on different adapter versions, stale adapters are deleted, bad requests
are refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `tests` is not a package on the import path; the contract module lives next to this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from actors.engines.base import GenerationRequest, SamplingSettings  # noqa: E402
from actors.engines.tiny_model import TinyModelConfig, build_tiny_model_dir  # noqa: E402
from actors.engines.transformers_engine import (  # noqa: E402
    TransformersEngine,
    TransformersEngineConfig,
)
from tests.engine_contract import *  # noqa: E402, F403
from tests.engine_contract import PROMPTS  # noqa: E402


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
