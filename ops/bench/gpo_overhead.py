"""Benchmark: GPO's generation cost per trained sample against plain PPO.

    gpo bench gpo-overhead [--config ops/configs/demo.toml] [--set SECTION.KEY=VALUE ...]
                           [--prompts 32] [--repeats 3] [--threads 1] [--write-results]

One process, no Redis: the generation work that actors and estimators do for a set of
prompts, replayed in the order the system does it (`ops.generation_replay`), on the tiny base
policy (`gpo bootstrap`) and the synthetic arithmetic task, in the transformers engine. Sizes
come from the run config (`[actor.rollout]`, `actor.batch_messages`, `[estimator.mc]`,
`estimator.n_reset`).

- PPO: the actor's `n` rollouts per prompt, `batch_messages` prompts per `generate` call
  (as `gpo-actor` batches its work). Every rollout is a trained sample.
- GPO, on the same rollouts: the estimator's MC searches (`find_critical_steps`,
  `estimator.batch_messages` trajectories at a time in stream order as `gpo-estimator` reads
  them, each round of a batch's searches one `generate` call), then for every trajectory with
  a critical step `n_reset` reset rollouts from its prefix, `batch_messages` reset requests
  per call (as the actor serves `resets`). Trained samples: the rollouts plus the reset
  rollouts the learner's batch composition takes (`[learner]` batch_mode and
  reset_fraction: at most one reset per fresh sample at a share of 0.5); reset rollouts past
  that are generated and dropped as surplus.
  Variants: uniform K with the estimator engine's prefix reuse `off` (every continuation
  prefills its own prefix) and `shared`, the adaptive budget with `shared`, and uniform K
  with `shared` and `[estimator.mc] share_states` (a state that several searches of one
  estimator batch reach is estimated once), then also `[estimator] reuse_mc_rollouts` (the
  continuations drawn from s_m are the reset rollouts: trained, not generated again).
- Reference row: uniform K with `shared` and `estimator.batch_messages = 1`, one search per
  `generate` call (same continuations, more calls).
- The cheaper searches of `[estimator.mc]`, each with `share_states` and
  `reuse_mc_rollouts`: bisection, screening by behaviour logprob, and failed trajectories
  only (uniform and bisection); their accuracy is `gpo bench critical-step`'s.

Seconds are time spent inside `engine.generate` (the actors' and estimators' generation
cost; scoring and Redis are not counted). Each repeat samples new rollouts (its own seeds)
and runs every variant on them, the variants' order rotating between repeats; a figure is
the median over repeats of that repeat's paired value, token counts are totals.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from actors.engines.base import Engine
from actors.mc_config import McConfig
from ops.bench.gpo_overhead_report import (
    PPO,
    Measure,
    describe,
    format_table,
    reading,
    summarise,
)
from ops.generation_replay import (
    Shape,
    Workload,
    actor_rollouts,
    arithmetic_workload,
    duplicate_states,
    estimator_pass,
    reset_rollouts,
    shape_from_config,
)
from ops.harness import parser, write_bench_section

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Variant:
    """One way to run the system."""

    name: str
    mc: McConfig | None
    """The estimator's MC search; None: plain PPO (no estimator work, no resets)."""
    engine: str = "shared"
    """Key of the estimator's engine in the engines dict (its prefix reuse mode)."""
    batch: int | None = None
    """Trajectories per estimator batch; None: the run config's `estimator.batch_messages`."""
    reuse: bool = False
    """`[estimator] reuse_mc_rollouts`: resets answered from the MC continuations at s_m."""


def variants(mc: McConfig, reuse: bool) -> list[Variant]:
    """PPO, the GPO variants the benchmark compares (built from the paper's search with the
    config's K and sampling), and last the search as the config sets it (`reuse`: its
    `reuse_mc_rollouts`)."""
    paper = replace(
        mc, budget="uniform", targets="all", share_states=False, screen="none", chooser="argmax"
    )
    uniform, adaptive = paper, replace(paper, budget="adaptive")
    lean = replace(uniform, share_states=True)
    return [
        Variant(PPO, None),
        Variant(f"GPO uniform K={mc.k}, no prefix reuse", uniform, "off"),
        Variant(f"GPO uniform K={mc.k}, prefix reuse", uniform, "shared"),
        Variant("GPO adaptive, prefix reuse", adaptive, "shared"),
        Variant(
            f"GPO uniform K={mc.k}, prefix reuse, share_states",
            replace(uniform, share_states=True),
            "shared",
        ),
        Variant(
            f"GPO uniform K={mc.k}, prefix reuse, reuse_mc_rollouts", uniform, "shared", reuse=True
        ),
        Variant(
            f"GPO uniform K={mc.k}, prefix reuse, share_states, reuse_mc_rollouts",
            replace(uniform, share_states=True),
            "shared",
            reuse=True,
        ),
        Variant(
            f"GPO uniform K={mc.k}, prefix reuse, estimator.batch_messages = 1",
            uniform,
            "shared",
            batch=1,
        ),
        # the cheaper searches, each with share_states and reuse_mc_rollouts
        *(
            Variant(
                f"GPO {name}, prefix reuse, share_states, reuse_mc_rollouts",
                c,
                "shared",
                reuse=True,
            )
            for name, c in (
                (f"bisect K={mc.k}", replace(lean, budget="bisect")),
                (f"screen logprob cap 4, K={mc.k}", replace(lean, screen="logprob")),
                (f"failed only, uniform K={mc.k}", replace(lean, targets="failed")),
                (f"failed only, bisect K={mc.k}", replace(lean, targets="failed", budget="bisect")),
            )
        ),
        Variant(f"GPO as configured: {describe(mc, reuse)}", mc, "shared", reuse=reuse),
    ]


async def run_repeats(
    work: Workload,
    engines: dict[str, Engine],
    shape: Shape,
    cases: list[Variant],
    repeats: int,
    seed: int = 0,
) -> list[list[Measure]]:
    """Per repeat, one Measure per case (in the order of `cases`).

    The actor's rollouts are sampled once per repeat (`engines["shared"]`, the actor's engine)
    and shared by every case; the GPO cases' order rotates between repeats."""
    out = []
    for rep in range(repeats):
        rollouts, fresh = await actor_rollouts(engines["shared"], work, shape, f"{seed}.{rep}")
        measures: dict[str, Measure] = {}
        states = duplicate_states(work, rollouts)
        gpo = [c for c in cases if c.mc is not None]
        for c in gpo[rep % len(gpo) :] + gpo[: rep % len(gpo)] if gpo else []:
            done = await estimator_pass(
                engines[c.engine], work, c.mc, shape, rollouts, c.batch, c.reuse
            )
            reset_cost = await reset_rollouts(engines["shared"], done.resets, shape)
            measures[c.name] = Measure(
                c.name,
                fresh,
                done.cost,
                reset_cost,
                len(rollouts),
                done.searched,
                len(done.resets) + done.answered,
                states,
                done.reused,
                shape.resets_per_fresh,
            )
        for c in cases:
            measures.setdefault(c.name, Measure(c.name, fresh, trajectories=len(rollouts)))
        out.append([measures[c.name] for c in cases])
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = parser("gpo bench gpo-overhead", __doc__.split("\n")[0], 3, "repeats (new rollouts each)")
    p.add_argument(
        "--config", default=str(ROOT / "ops" / "configs" / "demo.toml"), help="run config"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a field of the config (e.g. learner.reset_fraction=0.75)",
    )
    p.add_argument("--prompts", type=int, default=32, help="prompts per repeat")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (gpo launch: 1)")
    p.add_argument("--seed", type=int, default=0, help="base of the rollout seeds")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch

    from actors.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
    from ops.tiny_policy.bootstrap import BootstrapConfig, bootstrap

    torch.set_num_threads(args.threads)
    shape = shape_from_config(args.config, args.set)
    boot = BootstrapConfig()
    model = str(bootstrap(boot))
    engines = {
        mode: TransformersEngine(TransformersEngineConfig(model=model, prefix_reuse=mode))
        for mode in ("shared", "off")
    }
    work = arithmetic_workload(engines["shared"].tokenizer, boot.load_task(), args.prompts)
    cases = variants(shape.mc, shape.reuse)
    print(
        f"{args.prompts} prompts x {args.repeats} repeats; n={shape.rollout.n}, "
        f"max_new_tokens={shape.rollout.max_new_tokens}, batch_messages={shape.batch_messages}, "
        f"estimator batch_messages={shape.estimator_batch}, K={shape.mc.k}, "
        f"n_reset={shape.n_reset}; tiny policy {boot.cache_key()}",
        flush=True,
    )
    start = time.perf_counter()
    # warm-up: allocator, kernels and first-call costs of both engines, on two prompts
    small = replace(work, prompts=work.prompts[:2])
    asyncio.run(run_repeats(small, engines, shape, cases, 1, seed=-1))
    table = asyncio.run(run_repeats(work, engines, shape, cases, args.repeats, args.seed))
    rows = summarise(table, args.prompts)
    text = format_table(rows)
    paragraph = reading(rows, table, shape)
    print(f"{text}\n\n{paragraph}")
    print(f"took {time.perf_counter() - start:.0f} s")
    if args.write_results:
        write_bench_section("gpo-overhead", argv, text, paragraph)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
