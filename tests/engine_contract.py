"""The engine contract (DESIGN.md section 5), as plain tests any `Engine` must pass.

A test module wires an implementation in by star-importing this module and defining a
module-scoped fixture `engine_factory`: a callable (sync or async) taking a model directory
(`model_dir`: the tiny model unless the module overrides it) and returning a float32 engine
on it. Tests share one engine per module (a vLLM engine takes a minute to start) and one
event loop (`runner`), so they never assume a fresh engine: they read
`engine.policy_version` and load the versions after it.

The reference for every logprob is the learner's view: the same base model plus a peft LoRA
adapter with random non-zero weights, in float32, teacher-forced on prompt + completion,
`log_softmax(logits / temperature)` (renormalised over the top-p nucleus where top_p < 1).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save as save_safetensors
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.engines.base import Engine, GenerationRequest, GenerationResult, SamplingSettings
from ops.tiny_policy.tiny_model import build_tiny_model_dir

LOGPROB_TOLERANCE = 1e-4
PROMPTS = ("what is 12+30?", "count: 1 2 3", "abc def")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir) -> Path:
    """The model the contract runs on: the tiny model, unless a module overrides this (the
    vLLM suite runs it on SmolLM2-135M-Instruct too)."""
    return tiny_model_dir


@pytest.fixture(scope="module")
def runner():
    """One event loop for the module: async engines may bind to the loop they start on."""
    with asyncio.Runner() as loop_runner:
        yield loop_runner


@pytest.fixture(scope="module")
def engine(runner, engine_factory, model_dir) -> Engine:
    async def start() -> Engine:
        made = engine_factory(model_dir)
        return await made if inspect.isawaitable(made) else made

    started = runner.run(start())
    yield started
    runner.run(started.close())


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def learner(model_dir) -> Learner:
    return Learner(model_dir)


class Learner:
    """The learner side: base model and the LoRA adapters it published, by version."""

    def __init__(
        self,
        model_dir: Path,
        adapter_std: float = 0.3,
        logprob_tolerance: float = LOGPROB_TOLERANCE,
    ) -> None:
        self.model_dir = model_dir
        self.adapter_std = adapter_std
        """Standard deviation of the random LoRA A and B weights of `make_adapter`."""
        self.logprob_tolerance = logprob_tolerance
        """How far an engine's logprob may be from this float32 recomputation: rounding
        grows with the model's depth and the size of its logits."""
        self.models: dict[int, torch.nn.Module] = {0: self._base()}

    def _base(self) -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()

    def make_adapter(self, seed: int, r: int = 4) -> tuple[dict, bytes, PeftModel]:
        """A LoRA adapter with random non-zero weights: (config dict, safetensors bytes, model)."""
        config = LoraConfig(
            r=r,
            lora_alpha=2 * r,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj", "down_proj"],
        )
        model = get_peft_model(self._base(), config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * self.adapter_std)
        weights = save_safetensors(get_peft_model_state_dict(model), metadata={"format": "pt"})
        return _as_json(config.to_dict()), weights, model.eval()

    async def publish(self, engine: Engine, seed: int) -> int:
        """Load a fresh random adapter into `engine` as the next version; returns the version."""
        version = engine.policy_version + 1
        config, weights, model = self.make_adapter(seed)
        await engine.load_adapter(version, config, weights)
        self.models[version] = model
        return version

    def logprobs(
        self,
        version: int,
        prompt: Sequence[int],
        completion: Sequence[int],
        settings: SamplingSettings,
    ) -> list[float]:
        """Teacher-forced logprobs of `completion` under the sampling distribution of `version`."""
        ids = torch.tensor([list(prompt) + list(completion)])
        with torch.no_grad():
            logits = self.models[version](input_ids=ids).logits[0].float()
        steps = logits[len(prompt) - 1 : len(ids[0]) - 1] / settings.temperature
        logp = torch.log_softmax(steps, dim=-1)
        if settings.top_p < 1:
            logp = _nucleus(logp, settings.top_p)
        return logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1).tolist()


def _as_json(config: dict) -> dict:
    """The config as it travels (adapter_config.json): sets become sorted lists."""
    return json.loads(
        json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
    )


def _nucleus(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Reference top-p: keep the most likely tokens until their mass reaches top_p; renormalise."""
    out = torch.full_like(logp, float("-inf"))
    for t in range(logp.shape[0]):
        mass = 0.0
        for token in logp[t].argsort(descending=True).tolist():
            if mass >= top_p:
                break
            out[t, token] = logp[t, token]
            mass += logp[t, token].exp().item()
    return out - torch.logsumexp(out, dim=-1, keepdim=True)


def _request(tokenizer, text: str, n: int = 1, **settings) -> GenerationRequest:
    ids = tokenizer(text)["input_ids"]
    return GenerationRequest(ids, n=n, sampling=SamplingSettings(**settings))


def _check_teacher_forced(
    learner: Learner, request: GenerationRequest, result: GenerationResult
) -> None:
    for completion in result.completions:
        expected = learner.logprobs(
            result.policy_version, request.prompt_token_ids, completion.token_ids, request.sampling
        )
        assert len(completion.logprobs) == len(completion.token_ids) > 0
        gaps = [abs(a - b) for a, b in zip(completion.logprobs, expected, strict=True)]
        assert max(gaps) <= learner.logprob_tolerance, (
            f"worst gap {max(gaps):.2e} at token {gaps.index(max(gaps))} of "
            f"{len(gaps)} (prompt {request.prompt_token_ids})"
        )


def test_engine_satisfies_protocol(engine):
    assert isinstance(engine, Engine)
    assert engine.policy_version >= 0


def test_logprobs_match_teacher_forcing_under_adapter(engine, runner, learner, tokenizer):
    version = runner.run(learner.publish(engine, seed=1))
    assert engine.policy_version == version
    # The prompts plus nested prefixes of the first (the estimator's shape: shared prefixes).
    texts = [*PROMPTS, PROMPTS[0][:5], PROMPTS[0][:9]]
    requests = [
        _request(tokenizer, p, n=3, temperature=0.7, max_new_tokens=24, seed=5) for p in texts
    ]
    results = runner.run(engine.generate(requests))
    for request, result in zip(requests, results, strict=True):
        assert result.policy_version == version
        _check_teacher_forced(learner, request, result)


def test_top_p_logprobs_are_renormalised_over_nucleus(engine, runner, learner, tokenizer):
    requests = [_request(tokenizer, p, n=2, top_p=0.6, max_new_tokens=16, seed=3) for p in PROMPTS]
    for request, result in zip(requests, runner.run(engine.generate(requests)), strict=True):
        _check_teacher_forced(learner, request, result)


def test_same_seed_same_output_and_other_seed_differs(engine, runner, tokenizer):
    batch = [_request(tokenizer, p, n=2, max_new_tokens=20, seed=42) for p in PROMPTS]
    first = runner.run(engine.generate(batch))
    second = runner.run(engine.generate(batch))
    assert [[c.token_ids for c in r.completions] for r in first] == [
        [c.token_ids for c in r.completions] for r in second
    ]
    other = runner.run(
        engine.generate([_request(tokenizer, PROMPTS[0], n=2, max_new_tokens=20, seed=43)])
    )
    assert [c.token_ids for c in other[0].completions] != [
        c.token_ids for c in first[0].completions
    ]


def test_batching_and_n_preserve_order(engine, runner, learner, tokenizer):
    requests = [
        _request(tokenizer, prompt, n=n, max_new_tokens=12, seed=100 + i)
        for i, (prompt, n) in enumerate(zip(PROMPTS, (1, 2, 3), strict=True))
    ]
    batched = runner.run(engine.generate(requests))
    assert [len(r.completions) for r in batched] == [1, 2, 3]
    for request, result in zip(requests, batched, strict=True):
        alone = runner.run(engine.generate([request]))[0]
        assert [c.token_ids for c in result.completions] == [c.token_ids for c in alone.completions]
        for a, b in zip(result.completions, alone.completions, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=learner.logprob_tolerance)
            assert a.text == tokenizer.decode(a.token_ids, skip_special_tokens=True)


def test_stop_strings_and_stop_tokens_end_completion(engine, runner, tokenizer):
    free = runner.run(engine.generate([_request(tokenizer, PROMPTS[1], max_new_tokens=30, seed=9)]))
    full = free[0].completions[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 30
    stop = full.text[6:8]
    end = full.text.index(stop) + len(stop)
    cut = runner.run(
        engine.generate([_request(tokenizer, PROMPTS[1], max_new_tokens=30, seed=9, stop=(stop,))])
    )[0].completions[0]
    assert cut.finish_reason == "stop"
    # it ends with the token that completes the stop string, and its text is that of its
    # tokens: with BPE a token can run past the stop string (" support" for stop "up")
    k = next(
        i
        for i in range(1, len(full.token_ids) + 1)
        if stop in tokenizer.decode(full.token_ids[:i], skip_special_tokens=True)
    )
    assert cut.token_ids == full.token_ids[:k]
    assert cut.text == tokenizer.decode(cut.token_ids, skip_special_tokens=True)
    assert cut.text.startswith(full.text[:end])

    stop_id = full.token_ids[5]
    first = full.token_ids.index(stop_id)
    by_id = runner.run(
        engine.generate(
            [_request(tokenizer, PROMPTS[1], max_new_tokens=30, seed=9, stop_token_ids=(stop_id,))]
        )
    )[0].completions[0]
    assert by_id.finish_reason == "stop"
    assert by_id.token_ids == full.token_ids[: first + 1]


def test_adapter_swap_mid_stream_keeps_started_requests_on_their_version(
    engine, runner, learner, tokenizer
):
    old = runner.run(learner.publish(engine, seed=11))
    long_batch = [_request(tokenizer, p, n=8, max_new_tokens=128, seed=21) for p in PROMPTS[:2]]
    new_request = _request(tokenizer, PROMPTS[2], n=2, max_new_tokens=16, seed=22)

    async def swap_during_generation():
        running = asyncio.create_task(engine.generate(long_batch))
        await asyncio.sleep(0.05)
        new = await learner.publish(engine, seed=12)
        still_running = not running.done()
        fresh = await engine.generate([new_request])
        return await running, still_running, new, fresh[0]

    started, still_running, new, fresh = runner.run(swap_during_generation())
    assert still_running, "the long generation ended before the swap: make it longer"
    assert new == old + 1 == engine.policy_version
    for request, result in zip(long_batch, started, strict=True):
        assert result.policy_version == old
        _check_teacher_forced(learner, request, result)
    assert fresh.policy_version == new
    _check_teacher_forced(learner, new_request, fresh)
    # The two adapters really differ, so matching the old one is evidence.
    completion = started[0].completions[0]
    under_new = learner.logprobs(
        new, long_batch[0].prompt_token_ids, completion.token_ids, SamplingSettings()
    )
    assert max(abs(a - b) for a, b in zip(completion.logprobs, under_new, strict=True)) > 1e-2


def test_bad_adapters_are_refused_and_previous_version_stays(engine, runner, learner, tokenizer):
    before = engine.policy_version
    config, weights, model = learner.make_adapter(seed=31)
    state = get_peft_model_state_dict(model)
    renamed = {k.replace("q_proj", "k_proj"): v for k, v in state.items()}
    reshaped = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in state.items()}
    bad = [
        (config, save_safetensors(renamed)),
        (config, save_safetensors(reshaped)),
        (config, b"not safetensors"),
        ({**config, "r": "many"}, weights),
    ]
    for bad_config, bad_weights in bad:
        with pytest.raises(ValueError):
            runner.run(engine.load_adapter(before + 1, bad_config, bad_weights))
        assert engine.policy_version == before
    result = runner.run(
        engine.generate([_request(tokenizer, PROMPTS[0], max_new_tokens=4, seed=1)])
    )
    assert result[0].policy_version == before
    runner.run(engine.load_adapter(before + 1, config, weights))
    learner.models[before + 1] = model
    assert engine.policy_version == before + 1
