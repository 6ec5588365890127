"""Critical-step math (GPO.md steps 2-4), as pure functions over numpy arrays.

A trajectory has T reasoning steps and T + 1 states: s_i is the prompt plus steps 0..i-1, so
s_0 is the bare prompt and s_T the whole completion. Monte Carlo (MC) continuations sampled
from s_i estimate V(s_i); V(s_T) is the trajectory's own reward. Step i's advantage is
A_i = V(s_{i+1}) - V(s_i): how much step i changed the chance of success.

The adaptive-budget helpers (`critical_step_posterior`, `plan_adaptive_round`) treat rewards
as success probabilities in [0, 1] and fit a change-point model to the values; they decide
where the next batch of continuations can change the chosen step, instead of spending K at
every boundary.

Nothing here samples or touches an engine; `actors/mc_search.py` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Selection = Literal["advantage", "random", "none"]
"""How the reset step is chosen: GPO's argmax |A| (`advantage`), uniform (`random`, the
Satori-style ablation), or never (`none`, plain PPO)."""

TIE_ATOL = 1e-9
"""Advantages whose magnitudes differ by less than this are ties (means of K rewards are not
exact in floating point: 2/3 - 1/3 and 1 - 2/3 differ in the last bit)."""


def step_values(rewards: Sequence[Sequence[float]], final_reward: float) -> np.ndarray:
    """V(s_0..s_T) from MC rewards.

    rewards: T sequences; rewards[i] holds the rewards of the continuations sampled from s_i
        (at least one each; counts may differ between boundaries).
    final_reward: the trajectory's own reward, which is V(s_T).
    Returns float64 array of shape (T + 1,): means of rewards[i], then final_reward.
    """
    for i, r in enumerate(rewards):
        if len(r) == 0:
            raise ValueError(f"boundary {i} has no MC rewards")
    return filled_step_values(rewards, final_reward)


def step_advantages(values: np.ndarray) -> np.ndarray:
    """A_i = V(s_{i+1}) - V(s_i).

    values: shape (T + 1,) from `step_values`.
    Returns shape (T,).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.shape[0] < 2:
        raise ValueError(f"values must have shape (T + 1,) with T >= 1, got {values.shape}")
    return np.diff(values)


def choose_critical_step(
    advantages: np.ndarray,
    selection: Selection,
    rng: np.random.Generator | None = None,
) -> int | None:
    """The step to reset to, or None for no reset.

    advantages: shape (T,) from `step_advantages`, T >= 1.
    selection: `advantage` -> argmax_i |A_i|, the earliest among ties (within TIE_ATOL), None
        when every |A_i| <= TIE_ATOL (an all-right or all-wrong prompt: nothing to learn from a
        reset); `random` -> a uniform index in [0, T) drawn from `rng`, whatever the
        advantages (Satori-style random reset); `none` -> always None.
    """
    a = np.abs(np.asarray(advantages, dtype=np.float64))
    if a.ndim != 1 or a.shape[0] < 1:
        raise ValueError(f"advantages must have shape (T,) with T >= 1, got {a.shape}")
    if selection == "none":
        return None
    if selection == "random":
        if rng is None:
            raise ValueError("selection='random' needs an rng")
        return int(rng.integers(a.shape[0]))
    if selection != "advantage":
        raise ValueError(f"unknown selection {selection!r}")
    top = float(a.max())
    if top <= TIE_ATOL:
        return None
    return int(np.flatnonzero(a >= top - TIE_ATOL)[0])


def segment_log_evidence(sums: np.ndarray, counts: np.ndarray, prior: float) -> np.ndarray:
    """log marginal likelihood of every run of consecutive positions sharing one value.

    sums, counts: shape (P,); rewards summed and counted per position (a fractional sum
        counts as that many successes).
    prior: Beta(prior, prior) on the shared value.
    Returns shape (P + 1, P + 1): [i, j] for i < j is log of the integral over v of
    v^S (1 - v)^F under the prior, S and F summed over positions i..j-1; -inf elsewhere.
    """
    cs = np.concatenate([[0.0], np.cumsum(sums, dtype=np.float64)])
    cn = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
    p = len(sums)
    out = np.full((p + 1, p + 1), -np.inf)
    base = _log_beta(prior, prior)
    for i in range(p):
        for j in range(i + 1, p + 1):
            s = cs[j] - cs[i]
            out[i, j] = _log_beta(prior + s, prior + cn[j] - cn[i] - s) - base
    return out


def critical_step_posterior(
    reward_sums: np.ndarray,
    counts: np.ndarray,
    final_reward: float,
    *,
    change_prob: float,
    prior: float,
    final_weight: float,
    draws: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Posterior probability of each step being the critical one, under a change-point model.

    GPO's premise is that a trace turns on few steps, so the values V(s_0..s_T) are modelled
    as piecewise constant: each step i changes the value with prior probability
    `change_prob` (independently), each constant run has its own value with a
    Beta(prior, prior) prior, and MC rewards from s_i are Bernoulli(V(s_i)). s_T is observed
    as `final_weight` pseudo-rewards equal to the trajectory's reward. Segmentations are drawn
    exactly from the posterior (product-partition dynamic program, O(T^2)), run values from
    their Beta posteriors, and each draw's argmax |A| is tallied. Unlike independent values
    per boundary, a run pools the rewards of all its boundaries, so a boundary with two
    rewards does not by itself suggest a large jump.

    reward_sums, counts: shape (T,); MC rewards (in [0, 1]) summed and counted per boundary.
    Returns shape (T + 1,), summing to 1: [i] = P(step i has the largest |A|) for i < T
    (earliest on ties), [T] = P(no step changes the value: no critical step).
    """
    sums = np.append(np.asarray(reward_sums, dtype=np.float64), final_weight * final_reward)
    n = np.append(np.asarray(counts, dtype=np.float64), final_weight)
    p = sums.shape[0]  # positions s_0..s_T
    ev = segment_log_evidence(sums, n, prior)
    log_stay, log_cut = math.log1p(-change_prob), math.log(change_prob)
    # forward[j] = log mass of segmentations of positions [0, j) whose last run ends at j;
    # back[j - 1, i] = cumulative P(that run starts at or before i), +inf for i >= j.
    forward = np.full(p + 1, -np.inf)
    forward[0] = 0.0
    back = np.full((p, p), np.inf)
    for j in range(1, p + 1):
        i = np.arange(j)
        w = forward[:j] + np.where(i > 0, log_cut, 0.0) + ev[:j, j] + (j - i - 1) * log_stay
        forward[j] = np.logaddexp.reduce(w)
        back[j - 1, :j] = np.cumsum(np.exp(w - forward[j]))
    # 1. Sample segmentations backwards from the end, all draws at once: cut[d, x] marks a
    #    run starting at position x (x = p closes the last run).
    u = rng.random((p, draws))
    cut = np.zeros((draws, p + 1), dtype=bool)
    cut[:, 0] = cut[:, p] = True
    end = np.full(draws, p)
    for k in range(p):
        live = np.flatnonzero(end > 0)
        if live.size == 0:
            break
        start = (back[end[live] - 1] <= u[k, live, None]).sum(axis=1)
        start = np.minimum(start, end[live] - 1)  # rounding: the cumsum may end below 1
        cut[live, start] = True
        end[live] = start
    # 2. Sample each run's value from its Beta posterior, all runs of all draws at once.
    run_of = np.cumsum(cut[:, :p], axis=1) - 1  # (draws, P): run index of each position
    nxt = np.empty((draws, p + 1), dtype=np.int64)  # nxt[d, x]: first cut at or after x
    nxt[:, p] = p
    for x in range(p - 1, -1, -1):
        nxt[:, x] = np.where(cut[:, x], x, nxt[:, x + 1])
    d_idx, lo = np.nonzero(cut[:, :p])
    hi = nxt[d_idx, lo + 1]
    cs = np.concatenate([[0.0], np.cumsum(sums)])
    cn = np.concatenate([[0.0], np.cumsum(n)])
    s = cs[hi] - cs[lo]
    run_values = np.zeros((draws, p))
    run_values[d_idx, run_of[d_idx, lo]] = rng.beta(prior + s, prior + (cn[hi] - cn[lo]) - s)
    values = np.take_along_axis(run_values, run_of, axis=1)  # (draws, P)
    # 3. Tally argmax |A| per draw; a draw with one run has no change at all.
    adv = np.abs(np.diff(values, axis=1))  # (draws, T)
    winners = np.where(adv.max(axis=1) > 0, np.argmax(adv, axis=1), p - 1)
    return np.bincount(winners, minlength=p) / draws


def posterior_choice(probs: np.ndarray, advantages: np.ndarray | None = None) -> int | None:
    """The most probable critical step from `critical_step_posterior` (earliest on ties).

    Without `advantages`: None when "no critical step" is the most probable outcome. With the
    raw MC advantages, shape (T,): the paper's rule decides whether there is a critical step
    (None only when every A_i is 0) and the posterior only which one. On a weak policy whose
    values are near 0 everywhere, "nothing changed" is often the most probable outcome even
    where a step did turn the answer; no reset at all would waste the trajectory.

    probs: shape (T + 1,).
    """
    if advantages is not None:
        if not np.any(advantages):
            return None
        return int(np.argmax(probs[:-1]))
    best = int(np.argmax(probs))
    return None if best == probs.shape[0] - 1 else best


def plan_adaptive_round(
    probs: np.ndarray,
    counts: np.ndarray,
    *,
    budget_left: int,
    step_k: int,
    max_k: int,
    confidence: float,
    candidate_prob: float,
) -> np.ndarray:
    """How many more continuations to draw from each boundary; all zeros means stop.

    Stop when the most probable outcome (`posterior_choice`) has at least `confidence`.
    Otherwise every step with probability >= `candidate_prob`, and the most probable one, is
    still in play; each of its two boundaries (s_i and s_{i+1}; s_T is exact) gets `step_k`
    more continuations, at most up to `max_k` per boundary, in order of the steps'
    probability, until `budget_left` is spent. "No critical step" in play puts every boundary
    in play: only samples everywhere can confirm that nothing changes. Other boundaries get
    nothing: more samples there would not change the answer.

    probs: shape (T + 1,) from `critical_step_posterior`.
    counts: shape (T,), continuations drawn so far per boundary.
    Returns int64 array of shape (T,).
    """
    n = np.asarray(counts, dtype=np.int64)
    t = n.shape[0]
    extra = np.zeros(t, dtype=np.int64)
    order = np.argsort(-np.asarray(probs), kind="stable")
    if probs[order[0]] >= confidence:
        return extra
    for step in order:
        if probs[step] < candidate_prob and step != order[0]:
            break
        for b in range(t) if step == t else (step, step + 1):
            add = min(step_k, max_k - int(n[b]), budget_left) if b < t and extra[b] == 0 else 0
            if add > 0:
                extra[b] = add
                budget_left -= add
    return extra


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def derive_seed(base: int, round_index: int, boundary: int) -> int:
    """A 31-bit request seed for (base seed, adaptive round, boundary).

    Different rounds at one boundary must not repeat the same continuations, so every
    (round, boundary) pair gets its own seed. splitmix64 finalizer: stable across processes
    and Python versions (unlike hash() of strings), and cheap.
    """
    x = (base * 0x9E3779B97F4A7C15 + round_index * 0xBF58476D1CE4E5B9 + boundary + 1) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % 2**64
    return (x ^ (x >> 31)) & 0x7FFFFFFF


def filled_step_values(rewards: Sequence[Sequence[float]], final_reward: float) -> np.ndarray:
    """V(s_0..s_T) when only some boundaries were estimated (bisection, screening).

    rewards: T sequences, rewards[0] not empty; an empty rewards[i] is a boundary that was
        not estimated and takes the value of the nearest estimated boundary before it, so
        the change over an unprobed stretch lands on its last step.
    Returns float64 array of shape (T + 1,); equals `step_values` when none is empty."""
    if not rewards or len(rewards[0]) == 0:
        raise ValueError("boundary 0 must be estimated")
    means: list[float] = []
    for r in rewards:
        means.append(float(np.mean(np.asarray(r, dtype=np.float64))) if len(r) else means[-1])
    return np.asarray([*means, float(final_reward)], dtype=np.float64)


def bisect_next(lo: int, hi: int, mid: int, values: dict[int, float]) -> tuple[int, int]:
    """One bisection step for the largest value change between s_lo and s_hi: keep the half
    whose ends differ more (the earlier half on a tie, within TIE_ATOL). `values` holds V at
    lo, mid and hi. Returns the new (lo, hi)."""
    left = abs(values[mid] - values[lo])
    right = abs(values[hi] - values[mid])
    return (mid, hi) if right > left + TIE_ATOL else (lo, mid)


def screen_steps(step_min_logprobs: Sequence[float], cap: int) -> list[int]:
    """The at most `cap` steps whose least likely token was least likely under the behaviour
    policy (where the sample made an uncertain choice), in step order; ties go to the
    earlier step. TreeRL and FR3E branch at such tokens (by entropy)."""
    order = sorted(range(len(step_min_logprobs)), key=lambda i: (step_min_logprobs[i], i))
    return sorted(order[: max(cap, 0)])


def searched(reward: float, targets: str, success_share: float, draw: float) -> bool:
    """Whether a fresh trajectory goes through the MC search. `targets`: `all`; `failed`
    (reward < 1: SRPO and ELPO search failures only); `failed_sampled` (failures, and a
    successful one when `draw` (uniform in [0, 1), fixed per trajectory) < `success_share`)."""
    if targets == "all" or reward < 1.0:
        return True
    if targets == "failed":
        return False
    if targets == "failed_sampled":
        return draw < success_share
    raise ValueError(f"unknown targets {targets!r}")
