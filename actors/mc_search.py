"""Find a trajectory's critical step with Monte Carlo continuations (GPO.md steps 2-4).

`find_critical_step` is the estimator's core without Redis: it needs only an object with the
`Engine` interface, a task with `score(prompt, completion_text)`, and a `decode` function for
token ids. Two budgets:

- `uniform` (the paper): K continuations from every boundary s_0..s_{T-1}, all in ONE
  `generate` call (one request per boundary, n = K), so an engine with prefix caching
  computes each shared prefix once.
- `adaptive` (beyond the paper): a first round of `adaptive_initial_k` per boundary, then
  rounds that add continuations only at the boundaries of steps that could still be the
  argmax |A| under a change-point posterior (`actors.critical.critical_step_posterior`,
  `plan_adaptive_round`), within a hard total of `adaptive_budget * T` continuations. One
  `generate` call per round.

Decoding: the engine interface has no tokenizer, so the caller passes `decode` (for a
Hugging Face tokenizer, `functools.partial(tok.decode, skip_special_tokens=True)`). A
continuation is scored on `decode(prefix_tokens + continuation_tokens)`, not on the
concatenation of two decoded strings, so a token boundary inside a multi-byte character or a
merged word decodes as in the trajectory itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from actors.critical import (
    Selection,
    choose_critical_step,
    critical_step_posterior,
    derive_seed,
    plan_adaptive_round,
    posterior_choice,
    step_advantages,
    step_values,
)
from actors.engines.base import Completion, Engine, GenerationRequest, SamplingSettings

Decode = Callable[[Sequence[int]], str]


class ScoringTask(Protocol):
    """The part of a task that MC search needs: the verifier."""

    def score(self, prompt: object, completion_text: str) -> float:
        """Reward of a full completion (text after the prompt) for this prompt."""
        ...


@dataclass(frozen=True, slots=True)
class StepTrajectory:
    """One finished trajectory, segmented into steps."""

    prompt_token_ids: Sequence[int]
    """The prompt the trajectory was generated from; never empty."""
    completion_token_ids: Sequence[int]
    """Generated tokens after the prompt."""
    step_spans: Sequence[tuple[int, int]]
    """[start, end) over completion tokens, one per step, sorted, disjoint, non-empty; T =
    len >= 1. State s_i is the prompt plus completion[:step_spans[i][0]]."""
    reward: float
    """The trajectory's own verifier reward: V(s_T)."""
    prompt: object
    """What the task's `score` takes as its prompt (a problem, a reference answer)."""

    @property
    def num_steps(self) -> int:
        return len(self.step_spans)

    def prefix(self, boundary: int) -> list[int]:
        """Token ids of s_boundary for boundary in [0, T): prompt plus the steps before it."""
        return list(self.prompt_token_ids) + list(
            self.completion_token_ids[: self.step_spans[boundary][0]]
        )

    def validate(self) -> None:
        n, prev_end = len(self.completion_token_ids), 0
        if not self.prompt_token_ids or not self.step_spans:
            raise ValueError("a trajectory needs a prompt and at least one step")
        for start, end in self.step_spans:
            if not prev_end <= start < end <= n:
                raise ValueError(f"bad step spans {list(self.step_spans)} for {n} tokens")
            prev_end = end


@dataclass(frozen=True, slots=True)
class McConfig:
    """How to estimate step values and choose the critical step."""

    k: int = 4
    """K: continuations per boundary in the uniform budget (paper default 4; 2..12 studied)."""
    selection: Selection = "advantage"
    """`advantage` (GPO: argmax |A|), `random` (uniform step), `none` (no reset)."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """Sampling of continuations; GPO uses the policy's own settings. `seed` is overridden
    per request when `seed` below is set."""
    seed: int | None = None
    """Base seed: request seeds derive from (seed, round, boundary), and `random` selection
    and the adaptive posterior draws use it too. Give each trajectory its own (e.g. from its
    id): one seed for all would feed the same random streams to every trajectory's
    continuations. None: the engine's own randomness, not reproducible."""
    budget: Literal["uniform", "adaptive"] = "uniform"
    """`uniform`: K at every boundary; `adaptive`: spend where the chosen step may change."""
    chooser: Literal["argmax", "posterior"] = "argmax"
    """Uniform budget: `argmax` of the raw MC advantages (the paper's rule) or the most
    probable step under the change-point posterior (`posterior`; its model is set by the
    `adaptive_change_prob`, `adaptive_prior`, `adaptive_final_weight` and `adaptive_draws`
    fields). The adaptive budget always uses the posterior."""
    adaptive_initial_k: int = 2
    """Adaptive: continuations per boundary in the first round."""
    adaptive_step_k: int = 2
    """Adaptive: continuations added per boundary still in play, per later round."""
    adaptive_max_k: int = 16
    """Adaptive: cap on continuations from one boundary."""
    adaptive_budget: float = 4.5
    """Adaptive: cap on the total, in continuations per step (4.5 is 56% of uniform K = 8)."""
    adaptive_confidence: float = 0.9
    """Adaptive: stop once the posterior gives the current choice at least this probability."""
    adaptive_candidate_prob: float = 0.05
    """Adaptive: a step stays in play while its posterior argmax probability is this or more."""
    adaptive_max_rounds: int = 8
    """Adaptive: cap on `generate` calls per trajectory (each round adds latency)."""
    adaptive_change_prob: float = 0.3
    """Adaptive: prior probability that a step changes the value (change-point model)."""
    adaptive_prior: float = 0.5
    """Adaptive: Beta(prior, prior) on each constant run of values; 0.5 is Jeffreys'."""
    adaptive_final_weight: float = 16.0
    """Adaptive: the trajectory's own reward counts as this many continuations from s_T."""
    adaptive_draws: int = 512
    """Adaptive: posterior samples per round (Monte Carlo error about 1/sqrt(draws))."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be >= 1")
        if self.selection not in ("advantage", "random", "none"):
            raise ValueError(f"unknown selection {self.selection!r}")
        if self.budget not in ("uniform", "adaptive"):
            raise ValueError(f"unknown budget {self.budget!r}")
        if self.chooser not in ("argmax", "posterior"):
            raise ValueError(f"unknown chooser {self.chooser!r}")
        if self.chooser == "posterior" and self.selection != "advantage":
            raise ValueError("the posterior chooser targets argmax |A|: needs 'advantage'")
        uses_posterior = self.budget == "adaptive" or self.chooser == "posterior"
        if uses_posterior and not (0 < self.adaptive_change_prob < 1 and self.adaptive_prior > 0):
            raise ValueError("need adaptive_change_prob in (0, 1) and adaptive_prior > 0")
        if self.budget == "adaptive":
            if self.selection != "advantage":
                raise ValueError("the adaptive budget targets argmax |A|: needs 'advantage'")
            if not 1 <= self.adaptive_initial_k <= self.adaptive_max_k:
                raise ValueError("need 1 <= adaptive_initial_k <= adaptive_max_k")
            if self.adaptive_budget < self.adaptive_initial_k or self.adaptive_step_k < 1:
                raise ValueError("need adaptive_budget >= initial_k and adaptive_step_k >= 1")
            if not 0 < self.adaptive_confidence <= 1 or self.adaptive_max_rounds < 1:
                raise ValueError("need adaptive_confidence in (0, 1] and max_rounds >= 1")


@dataclass(frozen=True, slots=True)
class CriticalStepResult:
    """What MC search found for one trajectory."""

    values: np.ndarray
    """V(s_0..s_T), shape (T + 1,); the last entry is the trajectory's reward."""
    advantages: np.ndarray
    """A_i = V(s_{i+1}) - V(s_i), shape (T,)."""
    critical_step: int | None
    """The chosen step index in [0, T), or None: no reset (flat values, or selection none)."""
    rollouts: int
    """Continuations generated for this trajectory (the MC cost)."""
    rounds: int
    """`generate` calls made (1 for the uniform budget)."""
    counts: np.ndarray
    """Continuations per boundary, shape (T,), int64."""
    rewards: list[list[float]]
    """The MC rewards per boundary, in sampling order (T lists)."""
    critical_completions: list[Completion]
    """The continuations drawn from s_m for the chosen step m ([] when None): reusable as
    reset rollouts (GPO.md `reuse_mc_rollouts`)."""
    step_probabilities: np.ndarray | None = None
    """Posterior P(step i is critical), shape (T + 1,); the last entry is P(no critical
    step). Only when the posterior chose (adaptive budget, or chooser `posterior`)."""


async def find_critical_step(
    engine: Engine,
    task: ScoringTask,
    trajectory: StepTrajectory,
    config: McConfig,
    *,
    decode: Decode,
) -> CriticalStepResult:
    """Estimate every step's value and advantage by MC, then choose the critical step.

    Uniform budget with chooser `argmax`: the paper's rule, `choose_critical_step` on the MC
    advantages. Adaptive budget, or chooser `posterior`: the most probable critical step
    under the change-point posterior (`posterior_choice`); it can differ from the argmax of
    the raw advantages, which overrates a jump between two noisy boundary estimates.
    """
    trajectory.validate()
    t = trajectory.num_steps
    rng = np.random.default_rng(config.seed)
    rewards: list[list[float]] = [[] for _ in range(t)]
    completions: list[list[Completion]] = [[] for _ in range(t)]
    probs = None
    if config.budget == "uniform":
        await _sample_round(
            engine, task, trajectory, config, decode, [config.k] * t, 0, rewards, completions
        )
        rounds = 1
        if config.chooser == "posterior":
            probs = _posterior(rewards, trajectory.reward, config, rng)
    else:
        rounds, probs = await _adaptive_rounds(
            engine, task, trajectory, config, decode, rng, rewards, completions
        )
    values = step_values(rewards, trajectory.reward)
    adv = step_advantages(values)
    if probs is None:
        chosen = choose_critical_step(adv, config.selection, rng)
    else:
        chosen = posterior_choice(probs, adv)
    counts = np.asarray([len(r) for r in rewards], dtype=np.int64)
    return CriticalStepResult(
        values=values,
        advantages=adv,
        critical_step=chosen,
        rollouts=int(counts.sum()),
        rounds=rounds,
        counts=counts,
        rewards=rewards,
        critical_completions=list(completions[chosen]) if chosen is not None else [],
        step_probabilities=probs,
    )


async def _adaptive_rounds(
    engine: Engine,
    task: ScoringTask,
    trajectory: StepTrajectory,
    config: McConfig,
    decode: Decode,
    rng: np.random.Generator,
    rewards: list[list[float]],
    completions: list[list[Completion]],
) -> tuple[int, np.ndarray]:
    """Sample in rounds until the chosen step is settled.

    Returns the number of rounds and the final posterior, shape (T + 1,).
    """
    t = trajectory.num_steps
    total = int(config.adaptive_budget * t)
    extra = np.full(t, config.adaptive_initial_k, dtype=np.int64)
    rounds = 0
    while True:
        # 1. One generate call for this round's continuations.
        await _sample_round(
            engine, task, trajectory, config, decode, extra.tolist(), rounds, rewards, completions
        )
        rounds += 1
        # 2. Posterior over the critical step given everything drawn so far.
        counts = np.asarray([len(r) for r in rewards], dtype=np.int64)
        probs = _posterior(rewards, trajectory.reward, config, rng)
        if rounds == config.adaptive_max_rounds:
            return rounds, probs
        # 3. Where more continuations could still change the answer.
        extra = plan_adaptive_round(
            probs,
            counts,
            budget_left=total - int(counts.sum()),
            step_k=config.adaptive_step_k,
            max_k=config.adaptive_max_k,
            confidence=config.adaptive_confidence,
            candidate_prob=config.adaptive_candidate_prob,
        )
        if extra.sum() == 0:
            return rounds, probs


def _posterior(
    rewards: list[list[float]], final_reward: float, config: McConfig, rng: np.random.Generator
) -> np.ndarray:
    """`critical_step_posterior` of the rewards drawn so far; shape (T + 1,)."""
    counts = np.asarray([len(r) for r in rewards], dtype=np.float64)
    sums = np.asarray([sum(r) for r in rewards], dtype=np.float64)
    if sums.min() < 0 or (sums > counts).any():
        raise ValueError("the change-point posterior needs rewards in [0, 1]")
    return critical_step_posterior(
        sums,
        counts,
        final_reward,
        change_prob=config.adaptive_change_prob,
        prior=config.adaptive_prior,
        final_weight=config.adaptive_final_weight,
        draws=config.adaptive_draws,
        rng=rng,
    )


async def _sample_round(
    engine: Engine,
    task: ScoringTask,
    trajectory: StepTrajectory,
    config: McConfig,
    decode: Decode,
    per_boundary: list[int],
    round_index: int,
    rewards: list[list[float]],
    completions: list[list[Completion]],
) -> None:
    """One `generate` call: per_boundary[i] continuations from s_i (skipping zeros); appends
    their rewards and completions in place."""
    boundaries = [i for i, n in enumerate(per_boundary) if n > 0]
    requests = []
    for i in boundaries:
        sampling = config.sampling
        if config.seed is not None:
            sampling = dataclasses.replace(sampling, seed=derive_seed(config.seed, round_index, i))
        requests.append(GenerationRequest(trajectory.prefix(i), per_boundary[i], sampling))
    results = await engine.generate(requests)
    if len(results) != len(requests):
        raise RuntimeError(f"engine returned {len(results)} results for {len(requests)}")
    for i, result in zip(boundaries, results, strict=True):
        kept = list(trajectory.completion_token_ids[: trajectory.step_spans[i][0]])
        for c in result.completions:
            text = decode(kept + list(c.token_ids))
            rewards[i].append(float(task.score(trajectory.prompt, text)))
            completions[i].append(c)
