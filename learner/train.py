"""One PPO update on a batch of samples: prepare (pi_old, reference, values, advantages),
then `ppo.epochs` passes of minibatch optimizer steps with gradient accumulation. When the
update is one optimizer step on a policy without a value head (the default: one epoch, one
minibatch), pi_old is the policy being trained and its no-grad pass is skipped: the training
forward's own log-probs, detached, are pi_old (ratio 1, the same gradient).

Data parallelism (torch.distributed, any backend): every rank holds the same batch and the
same micro-batch plan and computes the micro-batches `i % world == rank`. Every loss term is
a token-sum divided by the token count of the *whole* minibatch (all ranks), so the sum of
the ranks' gradients is the one-process gradient; it is all-reduced (SUM) once per optimizer
step over the trainable parameters only (LoRA + value head), which is what DDP does minus the
per-micro-batch `no_sync` bookkeeping. Whitening statistics are all-reduced the same way.
With world = 1 no collective is called.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from learner.batches import MicroBatch, collate, plan_micro_batches, token_advantages
from learner.config import LearnerConfig
from learner.gae import gae, terminal_rewards
from learner.kl import masked_k3_kl
from learner.logprobs import token_entropy
from learner.masks import masked_sum
from learner.policy import Policy
from learner.ppo_loss import clipped_surrogate, clipped_value_loss
from protocol.messages import Sample


@dataclass(frozen=True, slots=True)
class World:
    """This process's place in the data-parallel group."""

    rank: int = 0
    size: int = 1

    def owns(self, i: int) -> bool:
        return i % self.size == self.rank

    def all_sum(self, t: Tensor) -> Tensor:
        """Sum `t` over ranks in place (no-op alone)."""
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


@dataclass
class Prepared:
    """A micro-batch with its no-gradient inputs to the loss."""

    mb: MicroBatch
    old_logprobs: Tensor | None
    """None when the update is one optimizer step (`on_policy_step`): pi_old is then the
    training forward's own log-probs, detached."""
    ref_logprobs: Tensor | None
    old_values: Tensor | None
    returns: Tensor | None


def make_optimizer(policy: Policy, cfg: LearnerConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (LoRA, value head), in `Policy.trainable` order."""
    return torch.optim.AdamW(policy.trainable(), lr=cfg.ppo.lr, weight_decay=cfg.ppo.weight_decay)


def ppo_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    samples: Sequence[Sample],
    cfg: LearnerConfig,
    step: int,
    world: World = World(),
    old_pass: bool | None = None,
) -> dict[str, float]:
    """Train on `samples` (the same list on every rank); returns mean statistics.

    `old_pass`: run the no-grad pi_old pass; None runs it unless `on_policy_step`."""
    plan = plan_micro_batches([len(s.token_ids) for s in samples], cfg.token_budget)
    advantages = token_advantages(samples, cfg.advantage, cfg.reset_baseline)
    if old_pass is None:
        old_pass = not on_policy_step(policy, cfg)
    if not old_pass and policy.value_head is not None:
        raise ValueError("a value head's GAE needs the pi_old pass (its old values)")
    prepared = {
        i: prepare(policy, collate(samples, advantages, rows, policy.device), cfg, old_pass)
        for i, rows in enumerate(plan)
        if world.owns(i)
    }
    if cfg.whiten_advantages:
        whiten_global(list(prepared.values()), world)
    totals: dict[str, Tensor] = {}
    steps = 0
    rng = random.Random(f"{cfg.seed}:{step}")  # the same minibatch order on every rank
    for _epoch in range(cfg.ppo.epochs):
        order = list(range(len(plan)))
        rng.shuffle(order)
        for part in np.array_split(np.array(order), min(cfg.ppo.minibatches, len(plan))):
            stats = optimizer_step(policy, optimizer, prepared, [int(i) for i in part], cfg, world)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            steps += 1
    tokens = totals.pop("tokens")
    grad_norm = totals.pop("grad_norm")
    skipped = totals.pop("skipped_steps")
    out = {k: float(v / tokens.clamp(min=1)) for k, v in totals.items()}
    out["grad_norm"] = float(grad_norm) / max(steps - float(skipped), 1)
    out["skipped_steps"] = float(skipped)
    out["tokens"] = float(tokens) / cfg.ppo.epochs
    return out


def on_policy_step(policy: Policy, cfg: LearnerConfig) -> bool:
    """True when the update is a single optimizer step without a value head: the weights do
    not change between pi_old's pass and the training pass, so pi_old's log-probs equal the
    training forward's (LoRA dropout is 0) and the separate no-grad pass is skipped."""
    return cfg.ppo.epochs == 1 and cfg.ppo.minibatches == 1 and policy.value_head is None


@torch.no_grad()
def prepare(policy: Policy, mb: MicroBatch, cfg: LearnerConfig, old_pass: bool = True) -> Prepared:
    """pi_old logprobs, reference logprobs (if KL is on), old values and GAE (if `gae`).
    Without `old_pass` only the reference pass runs (see `on_policy_step`)."""
    policy.model.eval()
    ref = None
    if cfg.ppo.kl_coef > 0:
        with policy.reference():
            ref = policy.forward(mb.input_ids, mb.attention_mask).logprobs
    if not old_pass:
        policy.model.train()
        return Prepared(mb, None, ref, None, None)
    fwd = policy.forward(mb.input_ids, mb.attention_mask)
    returns = None
    if fwd.values is not None:
        rewards = terminal_rewards(mb.rewards, mb.mask)
        adv, returns = gae(rewards, fwd.values, mb.mask, cfg.gamma, cfg.lam)
        mb = MicroBatch(**{**_fields(mb), "advantages": adv})
    policy.model.train()
    return Prepared(mb, fwd.logprobs, ref, fwd.values, returns)


def whiten_global(prepared: list[Prepared], world: World, eps: float = 1e-8) -> None:
    """Whiten advantages in place with one mean and (unbiased) std over every trained
    token of the batch, on all ranks. Rows with nothing to learn still get 0 off the mask."""
    stats = torch.zeros(3, dtype=torch.float64)
    for p in prepared:
        a, m = p.mb.advantages.double().cpu(), p.mb.mask.cpu()
        stats += torch.stack([m.sum().double(), masked_sum(a, m), masked_sum(a * a, m)])
    n, s, ss = world.all_sum(stats).tolist()
    if n < 1:
        return
    mean = s / n
    var = max(ss - n * mean * mean, 0.0) / max(n - 1, 1)
    scale = 1.0 / (var + eps) ** 0.5 if var + eps > 0 else 1.0
    for p in prepared:
        adv = torch.where(p.mb.mask, (p.mb.advantages - mean) * scale, 0.0)
        p.mb = MicroBatch(**{**_fields(p.mb), "advantages": adv.float()})


def optimizer_step(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    prepared: dict[int, Prepared],
    part: list[int],
    cfg: LearnerConfig,
    world: World,
) -> dict[str, Tensor]:
    """Accumulate the gradient of the minibatch `part` (own micro-batches only), all-reduce,
    clip, step. Returns token-weighted sums of the statistics (and `tokens`)."""
    mine = [prepared[i] for i in part if i in prepared]
    count = torch.tensor(float(sum(int(p.mb.mask.sum()) for p in mine)), dtype=torch.float64)
    tokens = float(world.all_sum(count))
    params = policy.trainable()
    for q in params:  # a rank without micro-batches in this minibatch still all-reduces zeros
        q.grad = torch.zeros_like(q) if q.grad is None else q.grad.zero_()
    sums = torch.zeros(7, dtype=torch.float64)
    for p in mine:
        sums += minibatch_loss(policy, p, cfg, tokens)
    if world.size > 1:
        flat = torch.cat([q.grad.reshape(-1) for q in params])
        world.all_sum(flat)
        torch.nn.utils.vector_to_parameters(flat, [q.grad for q in params])
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.ppo.max_grad_norm or float("inf"))
    # a non-finite loss or gradient never reaches the weights: the step is skipped (every
    # rank sees the same all-reduced gradient, so every rank skips it)
    finite = bool(torch.isfinite(norm)) and bool(torch.isfinite(sums).all())
    if finite:
        optimizer.step()
    else:
        for q in params:
            q.grad = None
        sums = torch.zeros_like(sums)  # a skipped step reports nothing
    world.all_sum(sums)
    names = ("loss", "policy_loss", "kl", "value_loss", "clip_fraction", "entropy", "approx_kl")
    out = {k: sums[i] for i, k in enumerate(names)}
    out["tokens"] = torch.tensor(tokens, dtype=torch.float64)
    out["grad_norm"] = norm.detach().double() if finite else torch.zeros((), dtype=torch.float64)
    out["skipped_steps"] = torch.tensor(0.0 if finite else 1.0, dtype=torch.float64)
    return out


def minibatch_loss(policy: Policy, p: Prepared, cfg: LearnerConfig, tokens: float) -> Tensor:
    """Forward and backward one micro-batch; loss = sum over its tokens / `tokens`.
    Returns its statistics as token-weighted sums, [7] float64."""
    mb = p.mb
    fwd = policy.forward(mb.input_ids, mb.attention_mask)
    old = fwd.logprobs.detach() if p.old_logprobs is None else p.old_logprobs
    pg, st = clipped_surrogate(
        fwd.logprobs,
        old,
        mb.advantages,
        mb.mask,
        clip_eps=cfg.ppo.clip_eps,
        behaviour_logprobs=mb.behaviour,
        tis_cap=cfg.ppo.tis_cap,
        token_count=tokens,
    )
    loss = pg
    kl = torch.zeros(())
    if p.ref_logprobs is not None:
        kl = masked_k3_kl(fwd.logprobs, p.ref_logprobs, mb.mask, token_count=tokens)
        loss = loss + cfg.ppo.kl_coef * kl
    vl = torch.zeros(())
    if fwd.values is not None:
        vl, _ = clipped_value_loss(
            fwd.values, p.old_values, p.returns, mb.mask, cfg.ppo.value_clip, token_count=tokens
        )
        loss = loss + cfg.ppo.value_coef * vl
    loss.backward()
    with torch.no_grad():
        n = mb.mask.sum().double()
        entropy = masked_sum(token_entropy(fwd.logits.detach(), cfg.temperature), mb.mask)
        # loss terms are already sums / tokens: scale back to sums so ranks add up
        return torch.stack(
            [
                loss.detach().double() * tokens,
                pg.detach().double() * tokens,
                kl.detach().double() * tokens,
                vl.detach().double() * tokens,
                st.clip_fraction.double() * n,
                entropy.double(),
                st.approx_kl.double() * n,
            ]
        ).cpu()


def _fields(mb: MicroBatch) -> dict:
    return {k: getattr(mb, k) for k in MicroBatch.__slots__}
