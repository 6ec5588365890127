"""Sampling math of the transformers engine against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from actors.engines.sampling import sample_rng, sample_tokens, sampling_logprobs

PROBS = [0.5, 0.25, 0.125, 0.125]


def _logits() -> torch.Tensor:
    return torch.tensor([PROBS]).log()


def _one(value: float) -> torch.Tensor:
    return torch.tensor([value])


def test_temperature_one_and_full_nucleus_keep_the_distribution():
    logp = sampling_logprobs(_logits(), _one(1.0), _one(1.0))
    assert logp.exp()[0].tolist() == pytest.approx(PROBS, abs=1e-6)


def test_temperature_two_takes_square_roots():
    roots = [math.sqrt(p) for p in PROBS]
    expected = [r / sum(roots) for r in roots]  # 0.3694, 0.2612, 0.1847, 0.1847
    logp = sampling_logprobs(_logits(), _one(2.0), _one(1.0))
    assert logp.exp()[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_top_p_keeps_smallest_set_reaching_mass_and_renormalises():
    # Mass before each token: 0, 0.5, 0.75, 0.875. top_p 0.7 keeps the first two.
    logp = sampling_logprobs(_logits(), _one(1.0), _one(0.7))
    assert logp.exp()[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0], abs=1e-6)
    # top_p 0.5 is reached by the first token alone: it gets probability 1.
    only = sampling_logprobs(_logits(), _one(1.0), _one(0.5))
    assert only[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isinf(only[0, 1:]).all()


def test_rows_use_their_own_settings():
    logits = _logits().repeat(2, 1)
    logp = sampling_logprobs(logits, torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.7]))
    assert logp.exp()[0].tolist() == pytest.approx(PROBS, abs=1e-6)
    assert logp.exp()[1].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0], abs=1e-6)


def test_inverse_cdf_picks_first_token_whose_cumulative_mass_exceeds_u():
    # Cumulative mass 0.5, 0.75, 0.875, 1.0.
    uniforms = torch.tensor([0.0, 0.49, 0.5, 0.8, 0.99])
    logp = sampling_logprobs(_logits().repeat(5, 1), torch.ones(5), torch.ones(5))
    tokens, logprobs = sample_tokens(logp, uniforms)
    assert tokens.tolist() == [0, 0, 1, 2, 3]
    assert logprobs.exp().tolist() == pytest.approx([0.5, 0.5, 0.25, 0.125, 0.125], abs=1e-6)


def test_tokens_outside_nucleus_are_never_drawn_even_at_u_one():
    logp = sampling_logprobs(_logits().repeat(2, 1), torch.ones(2), torch.full((2,), 0.7))
    tokens, logprobs = sample_tokens(logp, torch.tensor([0.999, 1.0]))
    assert tokens.tolist() == [1, 1]
    assert logprobs.tolist() == pytest.approx([math.log(1 / 3)] * 2, abs=1e-6)


def test_sample_streams_depend_only_on_seed_and_index():
    assert sample_rng(7, 0).random() == sample_rng(7, 0).random()
    draws = {sample_rng(7, 0).random(), sample_rng(7, 1).random(), sample_rng(8, 0).random()}
    assert len(draws) == 3
