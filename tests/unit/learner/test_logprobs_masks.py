"""Token log-probs, loss masks and masked reductions against hand numbers and slow loops."""

from __future__ import annotations

import math

import pytest
import torch

from learner.logprobs import token_entropy, token_logprobs
from learner.masks import (
    completion_mask,
    masked_mean,
    masked_sum,
    masked_var,
    place_completion_values,
    to_targets,
)


def _reference_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0):
    """One softmax per (row, position), written the obvious way."""
    b, t, _ = logits.shape
    out = torch.empty(b, t - 1)
    for i in range(b):
        for j in range(t - 1):
            row = logits[i, j].float() / temperature
            out[i, j] = torch.log_softmax(row, dim=-1)[ids[i, j + 1]]
    return out


def test_logprobs_hand_numbers():
    # Uniform logits over 4 tokens: every target has log(1/4).
    logits = torch.zeros(1, 3, 4)
    ids = torch.tensor([[0, 3, 1]])
    assert torch.allclose(token_logprobs(logits, ids), torch.full((1, 2), -math.log(4)))
    assert token_logprobs(logits[:, :1], ids[:, :1]).shape == (1, 0)
    # logits [0, ln 3] at position 0 -> p(token 1) = 3/4, target is ids[1] = 1.
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    out = token_logprobs(logits, torch.tensor([[0, 1]]))
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx(math.log(0.75), abs=1e-7)


@pytest.mark.parametrize("chunk_size", [None, 1, 5, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_reference(chunk_size, temperature):
    g = torch.Generator().manual_seed(0)
    # Scale keeps log-probs near -5, where fp32 spacing is well under 1e-6.
    logits = torch.randn(3, 7, 50, generator=g) * 2 * temperature
    ids = torch.randint(0, 50, (3, 7), generator=g)
    got = token_logprobs(logits, ids, temperature=temperature, chunk_size=chunk_size)
    want = _reference_logprobs(logits, ids, temperature)
    assert got.shape == (3, 6) and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-6, rtol=0)


def test_logprobs_bf16_logits_are_upcast():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 30, generator=g) * 2).to(torch.bfloat16)
    ids = torch.randint(0, 30, (2, 5), generator=g)
    got = token_logprobs(logits, ids, chunk_size=3)
    assert got.dtype == torch.float32
    assert torch.allclose(got, _reference_logprobs(logits.float(), ids), atol=1e-6, rtol=0)


def test_logprobs_gradient_matches_log_softmax():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(2, 4, 11, generator=g, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    ids = torch.randint(0, 11, (2, 4), generator=g)
    token_logprobs(a, ids).sum().backward()
    torch.log_softmax(b[:, :-1], -1).gather(-1, ids[:, 1:, None]).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_entropy_uniform_and_peaked():
    logits = torch.zeros(1, 2, 8)
    assert torch.allclose(token_entropy(logits), torch.full((1, 1), math.log(8)))
    peaked = torch.tensor([[[100.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    assert token_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_completion_mask_hand():
    # Row 0: P=2, C=3 in T=6 -> targets 1..3. Row 1: P=1, C=5 -> targets 0..4. Row 2: C=0.
    m = completion_mask(torch.tensor([2, 1, 3]), torch.tensor([3, 5, 0]), seq_len=6)
    assert m.dtype == torch.bool and m.shape == (3, 5)
    assert m.tolist() == [
        [False, True, True, True, False],
        [True, True, True, True, True],
        [False] * 5,
    ]


def test_completion_mask_matches_loop():
    g = torch.Generator().manual_seed(3)
    t = 12
    p = torch.randint(1, 8, (20,), generator=g)
    c = torch.stack([torch.randint(0, int(t - pi) + 1, (1,), generator=g)[0] for pi in p])
    m = completion_mask(p, c, t)
    for b in range(20):
        for j in range(t - 1):
            # target j is input token j+1; it is a completion token iff P <= j+1 < P+C
            assert m[b, j].item() == (p[b] <= j + 1 < p[b] + c[b])


def test_token_aligned_sample_fields_shift_onto_targets():
    # A Sample's loss_mask is token-aligned: 0 on the prefix, 1 on the completion, padded.
    token_mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    want = completion_mask(torch.tensor([2, 1]), torch.tensor([3, 5]), seq_len=6)
    assert torch.equal(to_targets(token_mask), want)
    behaviour = torch.tensor([[0.0, 0.0, -0.5, -0.25, -2.0, 0.0]])
    assert to_targets(behaviour).tolist() == [[0.0, -0.5, -0.25, -2.0, 0.0]]


def test_completion_mask_rejects_bad_lengths():
    with pytest.raises(ValueError):
        completion_mask(torch.tensor([0]), torch.tensor([1]), 4)
    with pytest.raises(ValueError):
        completion_mask(torch.tensor([3]), torch.tensor([2]), 4)


def test_place_completion_values_aligns_with_mask():
    p = torch.tensor([2, 1])
    vals = [torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 2.0])]
    out = place_completion_values(vals, p, seq_len=5, fill=-9.0)
    want = torch.tensor([[-9.0, 0.1, 0.2, 0.3], [1.0, 2.0, -9.0, -9.0]])
    assert torch.equal(out, want)
    m = completion_mask(p, torch.tensor([3, 2]), 5)
    assert torch.equal(out != -9.0, m)
    with pytest.raises(ValueError):
        place_completion_values([torch.ones(4)], torch.tensor([2]), seq_len=5)


def test_masked_reductions_hand_and_empty():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 5.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_sum(x, m).item() == 6.0
    assert masked_mean(x, m).item() == 2.0
    assert masked_mean(x, m, dim=-1).tolist() == [1.5, 3.0]
    assert masked_var(x, m).item() == pytest.approx(2.0 / 3.0)
    assert masked_var(x, m, unbiased=True).item() == pytest.approx(1.0)
    none = torch.zeros_like(m)
    assert masked_mean(x, none).item() == 0.0
    assert masked_mean(x, none, dim=-1).tolist() == [0.0, 0.0]
    assert masked_var(x, none).item() == 0.0
    assert masked_var(x, torch.tensor([[True, False, False], [False] * 3]), unbiased=True) == 0


def test_logprobs_save_no_vocab_sized_copy_for_backward():
    # Autograd may keep the logits themselves, but nothing else of size [B, T-1, V]: a
    # log_softmax + gather would save its whole output.
    b, t, v = 2, 9, 64
    logits = torch.randn(b, t, v, requires_grad=True)
    ids = torch.randint(0, v, (b, t))
    extra: list[int] = []

    def pack(x: torch.Tensor):
        if x.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr():
            extra.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = token_logprobs(logits, ids, chunk_size=4)
    assert max(extra, default=0) < v  # only [B, c]-sized tensors besides the logits
    out.sum().backward()
    assert logits.grad is not None
