"""GAE, terminal rewards, MC/group advantages and whitening: hand numbers and slow loops."""

from __future__ import annotations

import math

import pytest
import torch

from learner.advantages import (
    broadcast_to_tokens,
    group_advantages,
    reset_token_advantages,
    step_token_advantages,
    whiten,
)
from learner.gae import gae, terminal_rewards
from learner.masks import completion_mask


def _reference_gae(rewards, values, mask, gamma, lam):
    """Textbook backward recursion over each row's masked-in positions, in plain python."""
    adv = [[0.0] * len(r) for r in rewards]
    for b in range(len(rewards)):
        idx = [t for t in range(len(rewards[b])) if mask[b][t]]
        next_v, next_a = 0.0, 0.0
        for t in reversed(idx):
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            next_a = delta + gamma * lam * next_a
            next_v = values[b][t]
            adv[b][t] = next_a
    ret = [
        [adv[b][t] + values[b][t] if mask[b][t] else 0.0 for t in range(len(rewards[b]))]
        for b in range(len(rewards))
    ]
    return adv, ret


def test_gae_three_steps_by_hand():
    # gamma 1, lambda 0.95, reward 1 at the end, V = [0.5, 0.6, 0.7]:
    # delta = [0.1, 0.1, 0.3]; A2 = 0.3, A1 = 0.1 + 0.95*0.3 = 0.385,
    # A0 = 0.1 + 0.95*0.385 = 0.46575; returns = A + V = [0.96575, 0.985, 1.0].
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert adv.tolist()[0] == pytest.approx([0.46575, 0.385, 0.3])
    assert ret.tolist()[0] == pytest.approx([0.96575, 0.985, 1.0])


def test_gae_lambda_one_is_return_minus_value_and_zero_is_td():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    # Discounted return from t: 0.81, 0.9, 1.0
    assert adv.tolist()[0] == pytest.approx([0.81 - 0.5, 0.9 - 0.6, 1.0 - 0.7])
    assert ret.tolist()[0] == pytest.approx([0.81, 0.9, 1.0])
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    assert adv.tolist()[0] == pytest.approx([0.9 * 0.6 - 0.5, 0.9 * 0.7 - 0.6, 1.0 - 0.7])


def test_gae_with_prefix_and_padding_matches_reference():
    g = torch.Generator().manual_seed(0)
    b, t = 5, 12
    prefix = torch.tensor([1, 3, 5, 2, 4])
    comp = torch.tensor([6, 8, 0, 10, 1])
    mask = completion_mask(prefix, comp, t + 1)  # [B, T]
    rewards = terminal_rewards(torch.rand(b, generator=g), mask)
    rewards = rewards + torch.where(mask, 0.01 * torch.randn(b, t, generator=g), 0.0)
    values = torch.randn(b, t, generator=g)
    values = torch.where(mask, values, torch.tensor(float("nan")))  # garbage outside
    adv, ret = gae(rewards, values, mask, gamma=0.99, lam=0.9)
    want_adv, want_ret = _reference_gae(
        rewards.tolist(), values.tolist(), mask.tolist(), gamma=0.99, lam=0.9
    )
    assert torch.allclose(adv, torch.tensor(want_adv), atol=1e-6)
    assert torch.allclose(ret, torch.tensor(want_ret), atol=1e-6)
    assert adv[2].eq(0).all() and ret[2].eq(0).all()  # empty completion: zeros, not NaN


def test_gae_skips_holes_in_the_mask():
    rewards = torch.tensor([[0.0, 99.0, 1.0]])
    values = torch.tensor([[0.5, 99.0, 0.7]])
    mask = torch.tensor([[True, False, True]])
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # The hole is transparent: A2 = 0.3, A0 = (0 + 0.7 - 0.5) + 0.5 * 0.3 = 0.35.
    assert adv.tolist()[0] == pytest.approx([0.35, 0.0, 0.3])


def test_gae_has_no_gradient():
    values = torch.tensor([[0.5, 0.6]], requires_grad=True)
    adv, ret = gae(torch.tensor([[0.0, 1.0]]), values, torch.ones(1, 2, dtype=torch.bool))
    assert not adv.requires_grad and not ret.requires_grad


def test_terminal_rewards_on_last_completion_token():
    mask = completion_mask(torch.tensor([2, 1, 3]), torch.tensor([2, 3, 0]), seq_len=5)
    out = terminal_rewards(torch.tensor([1.0, -0.5, 7.0]), mask)
    assert out.tolist() == [[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, -0.5, 0.0], [0.0] * 4]


def test_step_token_advantages_hand_and_reference():
    spans = [(0, 3), (3, 4), (4, 7)]
    out = step_token_advantages(torch.tensor([0.5, -0.25, 0.0]), spans, 8)
    # token 7 (e.g. an EOS outside every span) gets 0
    assert out.tolist() == [0.5, 0.5, 0.5, -0.25, 0.0, 0.0, 0.0, 0.0]

    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        n = int(torch.randint(1, 30, (1,), generator=g))
        cuts = sorted(set(torch.randint(0, n + 1, (6,), generator=g).tolist()))
        spans = [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if (a + b) % 3]
        step_adv = torch.randn(len(spans), generator=g)
        want = [0.0] * n
        for (a, b), v in zip(spans, step_adv.tolist(), strict=True):
            for j in range(a, b):
                want[j] = v
        assert step_token_advantages(step_adv, spans, n).tolist() == want


def test_step_token_advantages_validation_and_empty():
    assert step_token_advantages(torch.tensor([]), [], 3).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        step_token_advantages(torch.tensor([1.0]), [(0, 5)], 4)
    with pytest.raises(ValueError):
        step_token_advantages(torch.tensor([1.0, 2.0]), [(0, 3), (2, 4)], 4)
    with pytest.raises(ValueError):
        step_token_advantages(torch.tensor([1.0]), [(0, 1), (1, 2)], 4)


def test_reset_and_broadcast_token_advantages():
    assert reset_token_advantages(1.0, 0.25, 3).tolist() == [0.75, 0.75, 0.75]
    mask = completion_mask(torch.tensor([2, 1]), torch.tensor([2, 1]), seq_len=4)
    out = broadcast_to_tokens(torch.tensor([1.0, 0.0]) - torch.tensor([0.25, 0.5]), mask)
    assert out.tolist() == [[0.0, 0.75, 0.75], [-0.5, 0.0, 0.0]]


def test_group_advantages_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    groups = torch.tensor([7, 7, 7, 7, 3, 9])  # group 7: mean 0.5; 3 and 9 are singletons
    assert group_advantages(rewards, groups).tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0]
    # group 7: unbiased std = sqrt(4 * 0.25 / 3) = 1/sqrt(3)
    scaled = group_advantages(rewards, groups, scale_by_std=True, eps=0.0)
    s3 = math.sqrt(3.0)
    assert scaled.tolist() == pytest.approx([0.5 * s3, -0.5 * s3, -0.5 * s3, 0.5 * s3, 0, 0])
    same = group_advantages(torch.ones(4), torch.zeros(4), scale_by_std=True)
    assert same.tolist() == [0.0] * 4


def test_group_advantages_match_loop():
    g = torch.Generator().manual_seed(2)
    rewards = torch.rand(40, generator=g, dtype=torch.float64)
    groups = torch.randint(0, 9, (40,), generator=g)
    got = group_advantages(rewards, groups, scale_by_std=True, eps=1e-6)
    members: dict[int, list[float]] = {}
    for r, k in zip(rewards.tolist(), groups.tolist(), strict=True):
        members.setdefault(k, []).append(r)
    for i, (r, k) in enumerate(zip(rewards.tolist(), groups.tolist(), strict=True)):
        xs = members[k]
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0
        assert got[i].item() == pytest.approx((r - mean) / (std + 1e-6), rel=1e-9)


def test_whiten_hand_and_reference():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, float("nan"), 7.0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    out = whiten(x, mask, eps=0.0)
    # selected [1, 3, 5, 7]: mean 4, unbiased var 20/3
    s = math.sqrt(20.0 / 3.0)
    assert out.flatten().tolist() == pytest.approx([-3 / s, -1 / s, 0.0, 1 / s, 0.0, 3 / s])
    kept = whiten(x, mask, shift_mean=False, eps=0.0).flatten().tolist()
    assert kept == pytest.approx([4 - 3 / s, 4 - 1 / s, 0.0, 4 + 1 / s, 0.0, 4 + 3 / s])
    sel = out[mask]
    assert sel.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert sel.std().item() == pytest.approx(1.0)


def test_whiten_empty_and_single_token_are_zero_not_nan():
    x = torch.tensor([[2.0, float("nan")]])
    assert whiten(x, torch.zeros(1, 2, dtype=torch.bool)).tolist() == [[0.0, 0.0]]
    assert whiten(x, torch.tensor([[True, False]])).tolist() == [[0.0, 0.0]]
    assert whiten(x, torch.tensor([[True, False]]), eps=0.0).tolist() == [[0.0, 0.0]]
    same = whiten(torch.full((1, 3), 0.1), torch.ones(1, 3, dtype=torch.bool), eps=0.0)
    assert torch.isfinite(same).all() and same.abs().max() < 1e-6
