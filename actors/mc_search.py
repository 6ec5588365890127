"""Find a trajectory's critical step with Monte Carlo continuations (GPO.md steps 2-4).

`find_critical_steps` is the estimator's core without Redis: it needs only an object with the
`Engine` interface, a task with `score(prompt, completion_text)`, and a `decode` function for
token ids. It runs the searches of several trajectories together, each round of all of them
as one `generate` call, so a batch of trajectories costs as many sequential decode loops as
its longest search has rounds; `find_critical_step` is the search of one. Two budgets:

- `uniform` (the paper): K continuations from every boundary s_0..s_{T-1}, all in ONE
  `generate` call (one request per boundary, n = K), so an engine with prefix caching
  computes each shared prefix once.
- `adaptive` (beyond the paper): a first round of `adaptive_initial_k` per boundary, then
  rounds that add continuations only at the boundaries of steps that could still be the
  argmax |A| under a change-point posterior (`actors.critical.critical_step_posterior`,
  `plan_adaptive_round`), within a hard total of `adaptive_budget * T` continuations. One
  `generate` call per round (shared by the searches still in play).

Decoding: the engine interface has no tokenizer, so the caller passes `decode` (for a
Hugging Face tokenizer, `functools.partial(tok.decode, skip_special_tokens=True)`). A
continuation is scored on `decode(prefix_tokens + continuation_tokens)`, not on the
concatenation of two decoded strings, so a token boundary inside a multi-byte character or a
merged word decodes as in the trajectory itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from actors.critical import (
    TIE_ATOL,
    bisect_next,
    choose_critical_step,
    critical_step_posterior,
    derive_seed,
    filled_step_values,
    plan_adaptive_round,
    posterior_choice,
    screen_steps,
    step_advantages,
)
from actors.engines.base import (
    Completion,
    Engine,
    GenerationRequest,
    GenerationResult,
)
from actors.mc_config import McConfig

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
    logprobs: Sequence[float] = ()
    """Behaviour logprob of each completion token (screening needs them; else may be empty)."""

    @property
    def num_steps(self) -> int:
        return len(self.step_spans)

    def step_min_logprobs(self) -> list[float]:
        """The lowest behaviour logprob within each step (screening's uncertainty signal)."""
        if len(self.logprobs) != len(self.completion_token_ids):
            raise ValueError("screening needs one behaviour logprob per completion token")
        return [float(min(self.logprobs[a:b])) for a, b in self.step_spans]

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
    """Rounds of continuations (1 for the uniform budget): the `generate` calls it took part
    in (shared with the other searches of a `find_critical_steps` batch)."""
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
    shared_rollouts: int = 0
    """Of `rollouts`, those generated for another search of the batch (`share_states`):
    the continuations this search cost the engine are `rollouts - shared_rollouts`."""
    tokens: int = 0
    """Tokens of the continuations generated for this search (shared ones not counted)."""


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
    The search of one trajectory alone: `find_critical_steps` of a batch of one.
    """
    (result,) = await find_critical_steps(engine, task, [trajectory], [config], decode=decode)
    return result


async def find_critical_steps(
    engine: Engine,
    task: ScoringTask,
    trajectories: Sequence[StepTrajectory],
    configs: Sequence[McConfig],
    *,
    decode: Decode,
) -> list[CriticalStepResult]:
    """The searches of several trajectories, run together; one result per trajectory, in order.

    Each round, the requests of every search still running go to the engine as ONE `generate`
    call: with the uniform budget one call for all of them, with the adaptive budget one per
    round across the searches still in play (at most `adaptive_max_rounds` calls). configs[j]
    is trajectory j's (its own seed; budgets may differ).

    Each search keeps its own seeds, random generator and rounds, so with seeded configs its
    result equals `find_critical_step` of that trajectory alone, for any engine whose sample
    j of a request depends only on (seed, j, prompt), as the engine contract states. Requests
    of different trajectories for the same state (s_0, the bare prompt, is shared by a
    prompt's n rollouts) stay separate unless their configs set `share_states`: then one
    request (the first search's, with its seed) serves every search that asked for that
    state in the round, which saves those continuations and ties each result to its batch.
    """
    if len(configs) != len(trajectories):
        raise ValueError(f"{len(configs)} configs for {len(trajectories)} trajectories")
    searches = [_Search(t, c) for t, c in zip(trajectories, configs, strict=True)]
    while running := [s for s in searches if s.plan]:
        # 1. this round's requests of every search still running, as one generate call (a
        #    state that several sharing searches ask for, once)
        requests = [s.requests() for s in running]
        unique, where, first = merge_shared(requests, [s.config.share_states for s in running])
        results = await engine.generate(unique)
        if len(results) != len(unique):
            raise RuntimeError(f"engine returned {len(results)} results for {len(unique)}")
        # 2. each search scores its continuations and plans its next round (or finishes)
        start = 0
        for search, qs in zip(running, requests, strict=True):
            mine = range(start, start + len(qs))
            search.absorb([results[where[j]] for j in mine], task, decode, [first[j] for j in mine])
            start += len(qs)
    return [s.result() for s in searches]


def merge_shared(
    requests: Sequence[Sequence[GenerationRequest]], share: Sequence[bool]
) -> tuple[list[GenerationRequest], list[int], list[bool]]:
    """One round's requests (per search) as the engine gets them: a request of a search with
    `share[j]` that repeats an earlier sharing request's prefix, count and sampling settings
    (the seed aside) is dropped and served by that one. Returns (requests to generate, for
    each flat request the index of the one serving it, whether it serves itself)."""
    unique: list[GenerationRequest] = []
    where: list[int] = []
    first: list[bool] = []
    seen: dict[tuple, int] = {}
    for qs, shares in zip(requests, share, strict=True):
        for q in qs:
            key = None
            if shares:
                key = (tuple(q.prompt_token_ids), q.n, dataclasses.replace(q.sampling, seed=None))
            if key is not None and key in seen:
                where.append(seen[key])
                first.append(False)
                continue
            if key is not None:
                seen[key] = len(unique)
            where.append(len(unique))
            first.append(True)
            unique.append(q)
    return unique, where, first


class _Search:
    """One trajectory's search as a sequence of rounds, driven by `find_critical_steps`.

    `plan` holds the continuations per boundary of the next round ([] once finished);
    `requests` turns it into generation requests and `absorb` takes their results."""

    def __init__(self, trajectory: StepTrajectory, config: McConfig):
        trajectory.validate()
        self.trajectory, self.config = trajectory, config
        t = trajectory.num_steps
        self.rng = np.random.default_rng(config.seed)
        self.rewards: list[list[float]] = [[] for _ in range(t)]
        self.completions: list[list[Completion]] = [[] for _ in range(t)]
        self.rounds = 0
        self.shared = 0
        self.tokens = 0
        self.probs: np.ndarray | None = None
        self.span: tuple[int, int] | None = None
        """Bisection: the stretch (lo, hi) of boundaries that holds the largest change."""
        self.candidates: list[int] | None = None
        """Screening: the steps eligible for the argmax."""
        k = config.k
        self.plan: list[int] = [k if config.budget == "uniform" else config.adaptive_initial_k] * t
        if config.budget == "bisect":
            self.span = (0, t)
            self.plan = [k if i in (0, t // 2) else 0 for i in range(t)]
        elif config.screen == "logprob":
            self.candidates = screen_steps(trajectory.step_min_logprobs(), config.screen_cap)
            probed = {0} | {b for j in self.candidates for b in (j, j + 1) if b < t}
            self.plan = [k if i in probed else 0 for i in range(t)]

    def requests(self) -> list[GenerationRequest]:
        """plan[i] continuations from s_i (boundaries with 0 skipped), seeded from (seed,
        round, boundary)."""
        out = []
        for i, n in enumerate(self.plan):
            if n == 0:
                continue
            sampling = self.config.sampling
            if self.config.seed is not None:
                seed = derive_seed(self.config.seed, self.rounds, i)
                sampling = dataclasses.replace(sampling, seed=seed)
            out.append(GenerationRequest(self.trajectory.prefix(i), n, sampling))
        return out

    def absorb(
        self,
        results: Sequence[GenerationResult],
        task: ScoringTask,
        decode: Decode,
        own: Sequence[bool] | None = None,
    ):
        """Score the results of `requests()`, then plan the next round ([] when done).
        own[j]: result j was generated for this search (not shared from another)."""
        traj, config = self.trajectory, self.config
        boundaries = [i for i, n in enumerate(self.plan) if n > 0]
        own = [True] * len(boundaries) if own is None else own
        for i, result, mine in zip(boundaries, results, own, strict=True):
            if not mine:
                self.shared += len(result.completions)
            else:
                self.tokens += sum(len(c.token_ids) for c in result.completions)
            kept = list(traj.completion_token_ids[: traj.step_spans[i][0]])
            for c in result.completions:
                text = decode(kept + list(c.token_ids))
                self.rewards[i].append(float(task.score(traj.prompt, text)))
                self.completions[i].append(c)
        self.rounds += 1
        self.plan = []
        if config.budget == "bisect":
            self.plan = self._bisect_round()
            return
        if config.budget == "uniform":
            if config.chooser == "posterior":
                self.probs = _posterior(self.rewards, traj.reward, config, self.rng)
            return
        # Adaptive: the posterior over the critical step given everything drawn so far, then
        # more continuations only where they could still change the answer.
        self.probs = _posterior(self.rewards, traj.reward, config, self.rng)
        if self.rounds == config.adaptive_max_rounds:
            return
        counts = np.asarray([len(r) for r in self.rewards], dtype=np.int64)
        extra = plan_adaptive_round(
            self.probs,
            counts,
            budget_left=int(config.adaptive_budget * traj.num_steps) - int(counts.sum()),
            step_k=config.adaptive_step_k,
            max_k=config.adaptive_max_k,
            confidence=config.adaptive_confidence,
            candidate_prob=config.adaptive_candidate_prob,
        )
        if extra.sum() > 0:
            self.plan = extra.tolist()

    def _bisect_round(self) -> list[int]:
        """Narrow the stretch with this round's midpoint; the next midpoint's plan, or []."""
        lo, hi = self.span
        t = self.trajectory.num_steps
        if hi - lo <= 1:
            return []
        mid = (lo + hi) // 2
        values = {i: float(np.mean(self.rewards[i])) for i in (lo, mid)}
        values[hi] = float(np.mean(self.rewards[hi])) if hi < t else self.trajectory.reward
        lo, hi = self.span = bisect_next(lo, hi, mid, values)
        if hi - lo <= 1:
            return []
        return [self.config.k if i == (lo + hi) // 2 else 0 for i in range(t)]

    def result(self) -> CriticalStepResult:
        values = filled_step_values(self.rewards, self.trajectory.reward)
        adv = step_advantages(values)
        selection = self.config.selection
        if self.probs is not None:
            chosen = posterior_choice(self.probs, adv)
        elif self.span is not None and selection == "advantage":
            lo = self.span[0]  # both ends of step lo were estimated
            chosen = lo if abs(adv[lo]) > TIE_ATOL else None
        elif self.candidates is not None and selection == "advantage":
            eligible = np.zeros_like(adv)
            eligible[self.candidates] = adv[self.candidates]
            chosen = choose_critical_step(eligible, selection)
        else:
            chosen = choose_critical_step(adv, selection, self.rng)
        counts = np.asarray([len(r) for r in self.rewards], dtype=np.int64)
        return CriticalStepResult(
            values=values,
            advantages=adv,
            critical_step=chosen,
            rollouts=int(counts.sum()),
            rounds=self.rounds,
            counts=counts,
            rewards=self.rewards,
            critical_completions=list(self.completions[chosen]) if chosen is not None else [],
            step_probabilities=self.probs,
            shared_rollouts=self.shared,
            tokens=self.tokens,
        )


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
