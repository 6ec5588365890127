"""PPO-clip surrogate, truncated importance weights, value loss and k3 KL: hand numbers,
slow per-token references, masking and gradient checks."""

from __future__ import annotations

import math

import pytest
import torch

from learner.kl import k3_kl, masked_k3_kl
from learner.logprobs import token_logprobs
from learner.masks import completion_mask
from learner.ppo_loss import clipped_surrogate, clipped_value_loss, truncated_importance_weights


def _one(logp: float, old: float, adv: float, **kw):
    lp = torch.tensor([[logp]], requires_grad=True)
    loss, stats = clipped_surrogate(
        lp, torch.tensor([[old]]), torch.tensor([[adv]]), torch.tensor([[True]]), **kw
    )
    loss.backward()
    return loss.item(), lp.grad.item(), stats


def test_ratio_e_clips_to_exactly_one_plus_eps():
    # log ratio 1 -> r = e; A = 1 > 0: the objective is min(e, 1.2) = 1.2 exactly, no grad.
    loss, grad, stats = _one(0.0, -1.0, 1.0, clip_eps=0.2)
    assert loss == -torch.tensor(1.2).item()  # exactly 1 + eps, at fp32 precision
    assert grad == 0.0
    assert stats.clip_fraction.item() == 1.0
    assert stats.ratio_mean.item() == pytest.approx(math.e)
    assert stats.approx_kl.item() == pytest.approx(math.e - 2.0)  # (r - 1) - log r


def test_ratio_e_with_negative_advantage_is_not_clipped():
    # A = -1: objective min(-e, -1.2) = -e, loss = e, d loss / d logp = e.
    loss, grad, stats = _one(0.0, -1.0, -1.0, clip_eps=0.2)
    assert loss == pytest.approx(math.e)
    assert grad == pytest.approx(math.e)
    assert stats.clip_fraction.item() == 0.0


def test_ratio_below_one_minus_eps_clips_for_negative_advantage():
    # r = e^-1 = 0.368 < 0.8, A = -2: objective min(-0.736, -1.6) = -1.6 -> loss 1.6, no grad.
    loss, grad, _ = _one(-1.0, 0.0, -2.0, clip_eps=0.2)
    assert loss == pytest.approx(1.6)
    assert grad == 0.0


def test_asymmetric_clip_high():
    loss, _, _ = _one(0.0, -1.0, 1.0, clip_eps=0.2, clip_eps_high=0.28)
    assert loss == pytest.approx(-1.28)
    loss, _, _ = _one(-1.0, 0.0, -1.0, clip_eps=0.2, clip_eps_high=0.28)
    assert loss == pytest.approx(0.8)


def test_inside_trust_region_gradient_is_minus_ratio_times_advantage():
    loss, grad, stats = _one(0.1, 0.0, 0.5)
    r = math.exp(0.1)
    assert loss == pytest.approx(-0.5 * r)
    assert grad == pytest.approx(-0.5 * r)
    assert stats.clip_fraction.item() == 0.0


def test_dual_clip_bounds_negative_advantage_loss():
    # r = e^2 = 7.39 > c = 3, A = -1: loss bounded at 3, no gradient.
    loss, grad, stats = _one(2.0, 0.0, -1.0, dual_clip=3.0)
    assert loss == pytest.approx(3.0)
    assert grad == 0.0
    assert stats.dual_clip_fraction.item() == 1.0
    # Positive advantages are untouched by the dual clip.
    loss, _, stats = _one(2.0, 0.0, 1.0, dual_clip=3.0)
    assert loss == pytest.approx(-1.2)
    assert stats.dual_clip_fraction.item() == 0.0


def test_truncated_importance_weights_hand():
    old = torch.tensor([0.0, 0.0, -1.0])
    beh = torch.tensor([-math.log(4.0), 0.0, 0.0])
    w = truncated_importance_weights(old, beh, cap=2.0)
    assert w.tolist() == pytest.approx([2.0, 1.0, math.exp(-1.0)])
    assert truncated_importance_weights(old, beh, cap=None)[0].item() == pytest.approx(4.0)


def test_tis_scales_loss_and_reports_truncation():
    # pi_old / mu = 4 truncated at 2: loss is 2x the plain PPO loss.
    lp, old = torch.tensor([[0.1]]), torch.tensor([[0.0]])
    adv, mask = torch.tensor([[1.0]]), torch.tensor([[True]])
    plain, _ = clipped_surrogate(lp, old, adv, mask)
    beh = torch.tensor([[-math.log(4.0)]])
    weighted, stats = clipped_surrogate(lp, old, adv, mask, behaviour_logprobs=beh, tis_cap=2.0)
    assert weighted.item() == pytest.approx(2.0 * plain.item())
    assert stats.tis_truncated_fraction.item() == 1.0
    assert stats.tis_weight_mean.item() == pytest.approx(2.0)
    on_policy, stats = clipped_surrogate(lp, old, adv, mask, behaviour_logprobs=old)
    assert on_policy.item() == pytest.approx(plain.item())
    assert stats.tis_weight_mean.item() == 1.0


def _reference_surrogate(logp, old, adv, beh, mask, eps, cap):
    """Per-token python loop of the documented formula."""
    total, n, clipped = 0.0, 0, 0
    for i in range(len(logp)):
        for j in range(len(logp[0])):
            if not mask[i][j]:
                continue
            r = math.exp(logp[i][j] - old[i][j])
            w = min(math.exp(old[i][j] - beh[i][j]), cap)
            a = adv[i][j]
            unclipped, clipped_obj = r * a, min(max(r, 1 - eps), 1 + eps) * a
            total += -w * min(unclipped, clipped_obj)
            clipped += clipped_obj < unclipped
            n += 1
    return total / max(n, 1), clipped / max(n, 1)


def test_surrogate_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    shape = (4, 9)
    logp = -torch.rand(shape, generator=g) * 3
    old = logp + torch.randn(shape, generator=g) * 0.3
    beh = old + torch.randn(shape, generator=g) * 0.5
    adv = torch.randn(shape, generator=g)
    mask = torch.rand(shape, generator=g) > 0.3
    mask[2] = False  # an all-masked row
    loss, stats = clipped_surrogate(
        logp, old, adv, mask, clip_eps=0.2, behaviour_logprobs=beh, tis_cap=1.5
    )
    want, want_clip = _reference_surrogate(
        logp.tolist(), old.tolist(), adv.tolist(), beh.tolist(), mask.tolist(), 0.2, 1.5
    )
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert stats.clip_fraction.item() == pytest.approx(want_clip)


def test_all_masked_gives_zero_not_nan_even_with_garbage():
    shape = (2, 3)
    logp = torch.zeros(shape, requires_grad=True)
    nan = torch.full(shape, float("nan"))
    ninf = torch.full(shape, -float("inf"))
    none = torch.zeros(shape, dtype=torch.bool)
    loss, stats = clipped_surrogate(logp, ninf, nan, none, behaviour_logprobs=nan)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logp.grad, torch.zeros(shape))
    for v in (stats.clip_fraction, stats.approx_kl, stats.ratio_mean, stats.tis_weight_mean):
        assert v.item() == 0.0
    vloss, vstats = clipped_value_loss(logp, nan, nan, none)
    assert vloss.item() == 0.0 and vstats.explained_variance.item() == 0.0
    assert masked_k3_kl(logp, ninf, none).item() == 0.0


def test_prefix_and_padding_positions_get_exactly_zero_gradient():
    # Rows: P=3, C=2 and P=1, C=4 in T=6; prefix targets and padding must get no gradient.
    g = torch.Generator().manual_seed(1)
    b, t, v = 2, 6, 13
    prefix, comp = torch.tensor([3, 1]), torch.tensor([2, 4])
    logits = torch.randn(b, t, v, generator=g, requires_grad=True)
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = completion_mask(prefix, comp, t)
    logp = token_logprobs(logits, ids)
    noise = torch.randn(b, t - 1, generator=g)
    # Garbage outside the mask (the wire pads behaviour log-probs however it likes).
    old = torch.where(mask, logp.detach() + 0.1 * noise, torch.tensor(float("nan")))
    adv = torch.where(mask, noise, torch.tensor(float("inf")))
    loss, _ = clipped_surrogate(logp, old, adv, mask, behaviour_logprobs=old - 0.2)
    kl = masked_k3_kl(logp, torch.where(mask, logp.detach() - 0.3, -float("inf")), mask)
    (loss + 0.1 * kl).backward()
    grad = logits.grad  # [B, T, V]; logits at position j predict target j
    for row in range(b):
        p, c = int(prefix[row]), int(comp[row])
        # Positions 0..P-2 predict prefix tokens; P+C-1.. predict nothing or padding.
        assert torch.equal(grad[row, : p - 1], torch.zeros_like(grad[row, : p - 1]))
        assert torch.equal(grad[row, p + c - 1 :], torch.zeros_like(grad[row, p + c - 1 :]))
        assert grad[row, p - 1 : p + c - 1].abs().sum(-1).gt(0).all()
    assert torch.isfinite(grad).all()


def test_value_loss_hand_numbers():
    mask = torch.tensor([[True, True, True]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    ret = torch.tensor([[1.0, 1.0, -1.0]])
    v = torch.tensor([[0.5, 0.1, 0.5]], requires_grad=True)
    loss, stats = clipped_value_loss(v, old, ret, mask, clip=0.2)
    # tok0: (0.5-1)^2=0.25 vs (0.2-1)^2=0.64 -> 0.64 (clipped, no grad)
    # tok1: (0.1-1)^2=0.81 vs same (inside clip) -> 0.81
    # tok2: (0.5+1)^2=2.25 vs (0.2+1)^2=1.44 -> 2.25 (unclipped)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 2.25) / 3)
    loss.backward()
    assert v.grad.tolist()[0] == pytest.approx([0.0, 0.5 * 2 * (0.1 - 1) / 3, 0.5 * 2 * 1.5 / 3])
    assert stats.clip_fraction.item() == pytest.approx(1 / 3)
    unclipped, _ = clipped_value_loss(v, old, ret, mask, clip=None)
    assert unclipped.item() == pytest.approx(0.5 * (0.25 + 0.81 + 2.25) / 3)


def test_value_loss_explained_variance():
    mask = torch.ones(1, 4, dtype=torch.bool)
    ret = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    _, perfect = clipped_value_loss(ret.clone(), ret, ret, mask)
    assert perfect.explained_variance.item() == pytest.approx(1.0)
    _, const = clipped_value_loss(ret.clone(), torch.full_like(ret, 1.5), ret, mask)
    assert const.explained_variance.item() == pytest.approx(0.0, abs=1e-6)


def test_k3_hand_numbers_and_reference():
    logp = torch.tensor([0.0, -1.0, -2.0])
    ref = torch.tensor([0.0, 0.0, -3.0])
    # log r = ref - logp = [0, 1, -1] -> [0, e - 2, e^-1]
    assert k3_kl(logp, ref).tolist() == pytest.approx([0.0, math.e - 2.0, math.exp(-1.0)])
    g = torch.Generator().manual_seed(2)
    logp, ref = -torch.rand(3, 5, generator=g) * 4, -torch.rand(3, 5, generator=g) * 4
    mask = torch.rand(3, 5, generator=g) > 0.4
    want, n = 0.0, 0
    for i in range(3):
        for j in range(5):
            if mask[i, j]:
                lr = float(ref[i, j] - logp[i, j])
                want, n = want + math.exp(lr) - lr - 1, n + 1
    assert masked_k3_kl(logp, ref, mask).item() == pytest.approx(want / n, rel=1e-6)
    assert (k3_kl(logp, ref) >= 0).all()


def test_k3_gradient_and_overflow_guard():
    logp = torch.tensor([-1.0], requires_grad=True)
    k3_kl(logp, torch.tensor([0.0])).sum().backward()
    # d/dlogp [e^(ref-logp) - (ref-logp) - 1] = -e^(ref-logp) + 1
    assert logp.grad.item() == pytest.approx(1.0 - math.e)
    huge = k3_kl(torch.tensor([-1000.0]), torch.tensor([0.0]))
    assert torch.isfinite(huge).all()


def test_token_count_spreads_micro_batches_over_the_step():
    # Two micro-batches of 1 and 3 tokens: with the step's count (4) as denominator their
    # losses add up to the loss of the whole batch at once.
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(1, 4, generator=g)
    old = logp + 0.1 * torch.randn(1, 4, generator=g)
    adv = torch.randn(1, 4, generator=g)
    full = torch.ones(1, 4, dtype=torch.bool)
    first = torch.tensor([[True, False, False, False]])
    whole, _ = clipped_surrogate(logp, old, adv, full)
    parts = [clipped_surrogate(logp, old, adv, m, token_count=4)[0] for m in (first, ~first)]
    assert (parts[0] + parts[1]).item() == pytest.approx(whole.item())
    v_whole, _ = clipped_value_loss(logp, old, adv, full)
    v_parts = [clipped_value_loss(logp, old, adv, m, token_count=4)[0] for m in (first, ~first)]
    assert (v_parts[0] + v_parts[1]).item() == pytest.approx(v_whole.item())
    kl_whole = masked_k3_kl(logp, old, full)
    kl_parts = [masked_k3_kl(logp, old, m, token_count=4) for m in (first, ~first)]
    assert (kl_parts[0] + kl_parts[1]).item() == pytest.approx(kl_whole.item())
    assert clipped_surrogate(logp, old, adv, ~full, token_count=0)[0].item() == 0.0


def test_huge_log_ratio_gives_finite_loss_and_gradient():
    for adv in (1.0, -1.0):
        loss, grad, _ = _one(0.0, -200.0, adv)
        assert math.isfinite(loss) and math.isfinite(grad)
    loss, grad, _ = _one(0.0, -200.0, 1.0)
    assert loss == pytest.approx(-1.2) and grad == 0.0
