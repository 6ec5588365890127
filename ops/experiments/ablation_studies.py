"""The ablation's arms and studies: what `gpo experiment ablation` runs
(ops/experiments/ablation.py runs them, ops/experiments/ablation_report.py reads them out). An arm is a
set of `--set` fields on a study's config; a study is its arms, the pairs it compares and
the config it runs.
"""

from __future__ import annotations

from ops.experiments.ablation_report import Study

NO_RESETS = {"learner.reset_fraction": "0.0"}
"""Arms without resets train all-fresh batches: the learner does not wait for resets."""
NO_MC = {"estimator.mc.selection": '"none"', "estimator.mc_values": "false", **NO_RESETS}
"""No MC search at all (plain PPO): the estimator only turns trajectories into samples."""

PAPER_SEARCH = {"estimator.mc.budget": '"uniform"', "estimator.mc.targets": '"all"'}
"""The paper's search where the default differs: uniform K at every boundary of every rollout
(with `share_states` and `reuse_mc_rollouts` off too, `gpo-paper`)."""

ARMS: dict[str, dict[str, str]] = {
    # the defaults: selection advantage, advantage mc, the failed rollouts bisected with
    # K = 4 (shared states, continuations at s_m as the resets), batches of 64 with exactly
    # 32 resets, reset rollouts baselined leave-one-out
    "gpo": {},
    "none": {"estimator.mc.selection": '"none"', **NO_RESETS},  # PPO with MC advantages
    "random": {"estimator.mc.selection": '"random"'},
    "ppo": {**NO_MC, "learner.advantage": '"group"'},  # plain PPO: group advantages
    "gpo-group": {"learner.advantage": '"group"'},
    "ppo-gae": {**NO_MC, "learner.advantage": '"gae"'},
    "gpo-gae": {"learner.advantage": '"gae"'},
    # GPO at equal fresh data per update: PPO's 64 fresh samples, 64 resets on top
    "gpo-fresh": {"learner.batch_mode": '"fresh"'},
    # the reset baseline before: reward - V(s_m), the estimate that chose the step
    "gpo-value": {"learner.reset_baseline": '"value"'},
    # a regime where PPO's clip binds: 4 optimizer steps per batch (minibatches of 16)
    "ppo-clip": {**NO_MC, "learner.advantage": '"group"', "learner.ppo.minibatches": "4"},
    "gpo-clip": {"learner.advantage": '"group"', "learner.ppo.minibatches": "4"},
    "gpo-adaptive": {"estimator.mc.budget": '"adaptive"'},
    # the defaults under a name of their own: the async study's runs (4 minutes) are kept
    # beside the 3-minute `gpo` runs of the demo's other studies, not over them
    "gpo-async": {},
    # GPO with no asynchrony: actors take work only on the newest adapter, and the learner
    # trains only samples of its current version (those generated during an update are dropped)
    "gpo-sync": {"actor.max_policy_lag": "0", "learner.max_policy_lag": "0"},
    # the paper's search: every rollout, uniform K, each search its own continuations, the
    # resets drawn by the actors
    "gpo-paper": {
        **PAPER_SEARCH,
        "estimator.mc.share_states": "false",
        "estimator.reuse_mc_rollouts": "false",
    },
    # the paper's search with the two savings: a state shared in a batch estimated once, and
    # the continuations drawn from s_m trained as the reset rollouts
    "gpo-lean": {
        **PAPER_SEARCH,
        "estimator.mc.share_states": "true",
        "estimator.reuse_mc_rollouts": "true",
    },
}
"""Arm name -> the `--set` fields that make it (TOML values)."""


def pivot_cell(steps: int, digits: int) -> dict[str, str]:
    """The `--set` fields that run the pivot task with chains of `steps` and a pivot factor
    of `digits` digits (the base policy bootstrapped on the same task)."""
    options = (
        f"{{ min_steps = {steps}, max_steps = {steps}, pivot_digits = {digits}, "
        'pivot_position = "random" }'
    )
    tokens = str(12 * steps + 8)  # a full canonical solution fits
    # run-wide facts: every role and the base policy's bootstrap take them from [run]
    return {
        "run.task_options": options,
        "run.sampling.max_new_tokens": tokens,
        "learner.eval.max_new_tokens": tokens,
    }


CELLS: dict[str, dict[str, str]] = {
    f"L{steps}-d{digits}": pivot_cell(steps, digits) for steps in (8, 16) for digits in (1, 2)
}
"""The pivot map's cells: chain length (8, 16 steps) x pivot difficulty (factor digits)."""


def arm_sets(arm: str) -> dict[str, str]:
    """The `--set` fields of an arm, `<arm>` or `<arm>@<cell>`."""
    name, _, cell = arm.partition("@")
    return {**ARMS[name], **(CELLS[cell] if cell else {})}


STUDIES: dict[str, Study] = {
    "selection": Study(
        "where to reset, and GPO against PPO with the same advantage estimator",
        (
            ("gpo", "GPO (mc)"),
            ("none", "PPO (mc: no resets)"),
            ("random", "random reset (mc)"),
            ("ppo", "plain PPO (group, no MC)"),
            ("gpo-group", "GPO (group)"),
            ("ppo-gae", "PPO (gae, no MC)"),
            ("gpo-gae", "GPO (gae)"),
            ("gpo-fresh", "GPO (mc), 64 fresh + 64 resets"),
            ("gpo-value", "GPO (mc), reset baseline V(s_m)"),
        ),
        (
            ("gpo", "none", "resets, estimator mc"),
            ("gpo-group", "ppo", "resets, estimator group"),
            ("gpo-gae", "ppo-gae", "resets, estimator gae"),
            ("gpo-fresh", "none", "resets on top of PPO's batch, estimator mc"),
            ("gpo", "random", "where to reset"),
            ("gpo", "gpo-value", "leave-one-out reset baseline against V(s_m)"),
            ("gpo", "gpo-fresh", "exact share 0.5 of 64 against 64 fresh + 64 resets"),
        ),
    ),
    "clip": Study(
        "GPO against PPO where PPO's clip binds (4 minibatches per batch)",
        (("gpo-clip", "GPO (group), 4 minibatches"), ("ppo-clip", "PPO (group), 4 minibatches")),
        (("gpo-clip", "ppo-clip", "resets, estimator group, clip binding"),),
    ),
    "pivot": Study(
        "GPO against PPO on the pivot task (one hard step in a chain of easy ones)",
        (
            ("ppo", "plain PPO (group, no MC)"),
            ("gpo-group", "GPO (group)"),
            ("gpo", "GPO (mc)"),
            ("random", "random reset (mc)"),
            ("none", "PPO (mc: no resets)"),
        ),
        (
            ("gpo-group", "ppo", "resets, estimator group"),
            ("gpo", "none", "resets, estimator mc"),
            ("gpo", "random", "where to reset"),
        ),
        config="pivot.toml",
    ),
    "pivot-map": Study(
        "GPO - PPO (group) over chain length x pivot difficulty on the pivot task",
        (("ppo", "plain PPO (group, no MC)"), ("gpo-group", "GPO (group)")),
        (("gpo-group", "ppo", "resets, estimator group"),),
        config="pivot.toml",
        cells=tuple(CELLS),
    ),
    "async": Study(
        "what asynchrony buys: the default lag bounds against max_policy_lag = 0",
        (
            ("gpo-async", "asynchronous (actor lag <= 2, learner lag <= 4)"),
            ("gpo-sync", "max_policy_lag = 0 (actor and learner)"),
        ),
        (("gpo-async", "gpo-sync", "asynchrony"),),
        speedup=("gpo-async", "gpo-sync"),
    ),
    "advantage": Study(
        "advantage estimator under GPO",
        (("gpo", "mc"), ("gpo-group", "group"), ("gpo-gae", "gae")),
    ),
    "budget": Study(
        "the MC search under GPO: the default against the paper's",
        (
            ("gpo-paper", "the paper's: uniform K=4, every rollout"),
            ("gpo-lean", "uniform K=4, share_states + reuse_mc_rollouts"),
            ("gpo", "default: failed only, bisect K=4, shared, reused"),
        ),
        (
            ("gpo", "gpo-paper", "the default search against the paper's"),
            ("gpo-lean", "gpo-paper", "share_states + reuse_mc_rollouts"),
            ("gpo", "gpo-lean", "failed only + bisection"),
        ),
    ),
}
