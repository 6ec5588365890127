"""How the estimator searches for the critical step (`[estimator.mc]`): the typed config of
`actors.mc_search`, its checks, and `paper_search()`, the paper's search that the default is
measured against (`gpo bench critical-step`, RESULTS.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from actors.critical import Selection
from actors.engines.base import SamplingSettings


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
    budget: Literal["uniform", "adaptive", "bisect"] = "bisect"
    """`uniform`: K at every boundary (the paper; `paper_search()`); `adaptive`: spend where the chosen step may change;
    `bisect`: K at s_0 and at midpoints only, descending into the half whose ends differ
    more, until one step is left (ELPO's search for the largest drop: K (1 + ceil(log2 T))
    continuations, ceil(log2 T) rounds). It finds the argmax |A| when V changes once; with
    several changes it can land on a smaller one. The default: with `targets = "failed"` it
    finds the first wrong step within 2 points of uniform K = 4 (scripted families and the
    tiny policy) at about half its continuations (`gpo bench critical-step`, RESULTS.md)."""
    screen: Literal["none", "logprob"] = "none"
    """`logprob`: estimate only the boundaries around the `screen_cap` steps whose least
    likely token had the lowest behaviour logprob (and s_0), in one round of K each; the
    critical step is the argmax |A| among those steps (uniform budget only)."""
    screen_cap: int = 4
    """`screen`: most candidate steps estimated per trajectory."""
    targets: Literal["all", "failed", "failed_sampled"] = "failed"
    """Which fresh trajectories are searched: `all`; `failed` (reward below 1); or
    `failed_sampled`: failures and a `success_share` of the successes (drawn per trajectory
    from its seed). The others get no reset and no step values: the learner gives them their
    group's advantage (reward - mean reward of the prompt's fresh rollouts in the batch).
    Default `failed`: a success has nothing to repair (SRPO, ELPO search failures only)."""
    success_share: float = 0.25
    """`targets = "failed_sampled"`: share of successful trajectories searched anyway."""
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
    share_states: bool = True
    """Searches run together (`find_critical_steps`, an estimator batch) estimate a state
    they share once: requests for the same token prefix with the same count and sampling
    settings in one round become one request whose continuations every such search uses
    (s_0, the bare prompt, is shared by all of a prompt's rollouts). Fewer continuations;
    the shared values are no longer independent between those trajectories, and a search's
    result then depends on its batch. False: every search draws its own (the paper). On by
    default: it saves about 39% of the continuations (`gpo bench gpo-overhead`)."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be >= 1")
        if self.selection not in ("advantage", "random", "none"):
            raise ValueError(f"unknown selection {self.selection!r}")
        if self.budget not in ("uniform", "adaptive", "bisect"):
            raise ValueError(f"unknown budget {self.budget!r}")
        if self.screen not in ("none", "logprob") or self.screen_cap < 1:
            raise ValueError("screen must be none or logprob, and screen_cap >= 1")
        if self.screen != "none" and (self.budget != "uniform" or self.chooser != "argmax"):
            raise ValueError("screening estimates one round of K: needs budget uniform, argmax")
        if self.targets not in ("all", "failed", "failed_sampled"):
            raise ValueError(f"unknown targets {self.targets!r}")
        if not 0.0 <= self.success_share <= 1.0:
            raise ValueError("success_share must lie in [0, 1]")
        if self.budget == "bisect" and self.chooser != "argmax":
            raise ValueError("bisection chooses its own step: needs chooser argmax")
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


def paper_search(**fields) -> McConfig:
    """The paper's search (GPO.md): K continuations from every boundary of every trajectory,
    argmax |A|, each search its own continuations; `fields` override (e.g. `k=8`). The
    reference the cheaper default search is measured against."""
    paper = {"budget": "uniform", "targets": "all", "share_states": False}
    return McConfig(**(paper | fields))
