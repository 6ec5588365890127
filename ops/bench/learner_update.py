"""Learner benchmark: one PPO update of `learner.train` against a bare forward+backward.

    gpo bench learner [--model DIR] [--config ops/configs/demo.toml] [--repeats 5] [--write-results]

The batch is built the way the running system builds it: the `[learner]` section of the
config (LoRA rank and modules, batch size, reset fraction, token budget, loss settings), the
base policy (`gpo bootstrap`'s, cached, unless `--model`), prompts of its arithmetic task
sampled by the transformers engine with the actors' `[actor.rollout]` settings
(`actors.rollout`), cut into steps, turned into Samples by the estimator's `make_sample`
with MC-style step advantages, plus reset rollouts from a critical step of each of the first
trajectories (the estimator's `make_reset` and `reset_sample`); `plan_batch` then takes a
batch of the configured composition (`batch_mode`, `reset_fraction`).

Timed side by side on one peft model (base plus LoRA), alternating, median of `--repeats`
after one warm-up of each:
1. floor: the same micro-batches (`plan_micro_batches` at `token_budget`, collated once,
   outside the clock), each a plain forward, a masked next-token cross-entropy on the logits
   and a backward, with gradients accumulating: the least any update of this batch costs.
2. learner: `ppo_update` itself, as configured (collate, the no-grad pi_old pass unless the
   update is one optimizer step, the clipped surrogate with truncated importance weights,
   entropy statistics, gradient clip, AdamW step).
3. `ppo_update` with the no-grad pi_old pass forced on, which is what row 2 saves by skipping
   it at one epoch of one minibatch (the same as row 2 otherwise).
Tokens/s counts the real (unpadded) tokens of the batch per update; `vs floor` is the speed
ratio to row 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actors.critical import choose_critical_step
from actors.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
from actors.estimator import EstimatorConfig
from actors.mc_search import CriticalStepResult
from actors.rollout import RolloutConfig, request_for, trajectories_for
from actors.samples import make_reset, make_sample, reset_sample, token_advantages
from actors.tasks.base import Task, load_task
from learner.batches import MicroBatch, collate, plan_micro_batches
from learner.batches import token_advantages as sample_advantages
from learner.composition import batch_targets, plan_batch
from learner.config import LearnerConfig
from learner.policy import Policy, build_policy
from learner.train import make_optimizer, on_policy_step, ppo_update
from ops.harness import console_table, markdown_table, parser, timed_rounds, write_bench_section
from protocol.config import from_mapping, load_toml
from protocol.messages import Prompt, Sample, Trajectory
from protocol.run import expand_run

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the result table."""

    case: str
    seconds: float
    """Median seconds per update."""
    tokens: int
    """Real (unpadded) tokens of the batch."""
    trained: int
    """Tokens on the loss mask (completion tokens)."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def trained_per_s(self) -> float:
        return self.trained / self.seconds


def speed_ratio(row: Row, floor: Row) -> float:
    """row's tokens/s over the floor's: < 1 when the row is slower (same tokens: time ratio)."""
    return row.tokens_per_s / floor.tokens_per_s


HEADER = ["case", "ms / update", "tokens/s", "trained tokens/s", "vs floor"]


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    floor = rows[0]
    return [
        [
            r.case,
            f"{1e3 * r.seconds:.1f}",
            f"{r.tokens_per_s:.0f}",
            f"{r.trained_per_s:.0f}",
            f"{speed_ratio(r, floor):.2f}x",
        ]
        for r in rows
    ]


def format_table(rows: Sequence[Row]) -> str:
    """Fixed-width console table; the first row is the floor the ratios refer to."""
    return console_table(HEADER, table_rows(rows), left=1)


# --- the batch --------------------------------------------------------------------------


def build_batch(
    model_dir: str,
    task: Task,
    learner: LearnerConfig,
    rollout: RolloutConfig,
    estimator: EstimatorConfig,
    seed: int = 0,
) -> list[Sample]:
    """`learner.batch_size` Samples built as actors and estimators build them (see above)."""
    engine = TransformersEngine(TransformersEngineConfig(model=model_dir))
    tok = engine.tokenizer
    rng = np.random.default_rng(seed)
    want_fresh, want_reset = batch_targets(
        learner.batch_mode, learner.batch_size, learner.reset_fraction
    )
    n_prompts = -(-want_fresh // rollout.n)
    prompts = [
        Prompt(
            id=f"bench:{i}",
            run="bench",
            ts=time.time(),
            task=task.name,
            text=p.text,
            token_ids=list(tok(p.text)["input_ids"]),
            answer=p.answer,
            epoch=0,
        )
        for i, p in enumerate(task.train_prompts()[:n_prompts])
    ]
    fresh = _rollouts(engine, prompts, task, rollout)
    samples, resets = [], []
    for traj in fresh:
        result = _mc_like_result(traj, rng)
        n = len(traj.completion_token_ids)
        samples.append(
            make_sample(
                traj, token_advantages(traj.step_spans, result.advantages, n), result.values
            )
        )
        if result.critical_step is not None and len(resets) * estimator.n_reset < want_reset:
            resets.append(make_reset(traj, result, estimator.n_reset, estimator.mc.selection, 0))
    samples += [reset_sample(traj) for traj in _rollouts(engine, resets, task, rollout)]
    plan = plan_batch(
        [s.kind for s in samples],
        learner.batch_mode,
        learner.batch_size,
        learner.reset_fraction,
        full=True,
        drained=True,
    )
    return [samples[i] for i in plan.take]


def _rollouts(engine, work: list, task: Task, rollout: RolloutConfig) -> list[Trajectory]:
    if not work:
        return []
    results = asyncio.run(engine.generate([request_for(w, rollout) for w in work]))
    return [
        t
        for w, r in zip(work, results, strict=True)
        for t in trajectories_for(w, r, task, engine.tokenizer, rollout, "bench", 0.0)
    ]


def _mc_like_result(traj: Trajectory, rng: np.random.Generator) -> CriticalStepResult:
    """Step values as K = 4 MC estimates give them (multiples of 1/4, the last the reward),
    their differences as advantages and the argmax |A| step; no rollouts are run."""
    steps = max(1, len(traj.step_spans))
    values = np.append(rng.integers(0, 5, steps) / 4, traj.reward).astype(np.float32)
    adv = np.diff(values)
    step = choose_critical_step(adv, "advantage") if traj.step_spans else None
    counts = np.full(steps, 4, np.int64)
    return CriticalStepResult(values, adv, step, 0, 0, counts, [], [])


# --- the timed cases --------------------------------------------------------------------


def floor_call(policy: Policy, mbs: list[MicroBatch]) -> Callable[[], None]:
    """Forward, masked next-token cross-entropy, backward over the pre-collated micro-batches."""
    total = float(sum(int(mb.mask.sum()) for mb in mbs))

    def call() -> None:
        for q in policy.trainable():
            q.grad = None
        for mb in mbs:
            logits = policy.model(
                input_ids=mb.input_ids, attention_mask=mb.attention_mask, use_cache=False
            ).logits
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(),
                mb.input_ids[:, 1:].flatten(),
                reduction="none",
            )
            (nll * mb.mask.flatten()).sum().div(total).backward()

    return call


def learner_call(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    samples: list[Sample],
    cfg: LearnerConfig,
    old_pass: bool | None = None,
) -> Callable[[], None]:
    step = iter(range(10**9))

    def call() -> None:
        ppo_update(policy, optimizer, samples, cfg, next(step), old_pass=old_pass)

    return call


def run(policy: Policy, samples: list[Sample], cfg: LearnerConfig, repeats: int) -> list[Row]:
    plan = plan_micro_batches([len(s.token_ids) for s in samples], cfg.token_budget)
    adv = sample_advantages(samples, cfg.advantage)
    mbs = [collate(samples, adv, rows, policy.device) for rows in plan]
    optimizer = make_optimizer(policy, cfg)
    cases = {
        "floor: forward + CE + backward": floor_call(policy, mbs),
        "learner: ppo_update": learner_call(policy, optimizer, samples, cfg),
        "learner: ppo_update with the pi_old pass": learner_call(
            policy, optimizer, samples, cfg, old_pass=True
        ),
    }
    seconds = [s for s, _ in timed_rounds(list(cases.values()), repeats)]
    tokens = sum(len(s.token_ids) for s in samples)
    trained = int(sum(int(mb.mask.sum()) for mb in mbs))
    return [Row(name, s, tokens, trained) for name, s in zip(cases, seconds, strict=True)]


def reading(
    rows: Sequence[Row], samples: Sequence[Sample], cfg: LearnerConfig, mbs: int, skipped: bool
) -> str:
    """The table in words; `skipped`: `ppo_update` skips the pi_old pass here."""
    floor, learner, old = rows
    gap = learner.seconds - floor.seconds
    lengths = [len(s.token_ids) for s in samples]
    resets = sum(s.kind == "reset" for s in samples)
    text = (
        f"A batch of {len(samples)} samples ({resets} resets; {floor.tokens} tokens, "
        f"{min(lengths)}-{max(lengths)} per sample, {floor.trained} of them trained) in "
        f"{mbs} micro-batch(es) of at most {cfg.token_budget} tokens, LoRA rank "
        f"{cfg.lora.rank} on {len(cfg.lora.target_modules)} module kinds. The learner's "
        f"update ran at {learner.tokens_per_s:.0f} tokens/s, {speed_ratio(learner, floor):.2f}x "
        f"the {floor.tokens_per_s:.0f} tokens/s of a bare forward and backward of the same "
        f"micro-batches ({learner.seconds / floor.seconds:.2f}x its time)."
    )
    if skipped:
        saved = old.seconds - learner.seconds
        text += (
            f" With one epoch of one minibatch, as here, pi_old is the policy being trained, "
            f"so `ppo_update` skips the no-grad pi_old pass and takes the training forward's "
            f"own log-probs: with the pass the update takes {old.seconds * 1000:.0f} ms "
            f"({speed_ratio(old, floor):.2f}x the floor's speed), so skipping it saves "
            f"{saved * 1000:.0f} ms per update ({100 * saved / old.seconds:.0f}%)."
        )
    else:
        text += (
            f" Here ({cfg.ppo.epochs} epoch(s) of {cfg.ppo.minibatches} minibatch(es), advantage "
            f"{cfg.advantage}) the no-grad pi_old pass is needed: the policy moves between "
            "optimizer steps, or the value head's old values feed GAE. Rows 2 and 3 are the "
            f"same update ({gap * 1000:.0f} ms above the floor)."
        )
    return text + (
        " Timings on a shared 2-core machine are noisy: the ratio comes from alternating "
        "rounds in one run."
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = parser("gpo bench learner", __doc__, repeats=5)
    p.add_argument("--model", help="base model directory (default: gpo bootstrap's, cached)")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="TOML with [learner], [actor]")
    p.add_argument("--batch-size", type=int, help="override learner.batch_size")
    p.add_argument("--max-new-tokens", type=int, help="override actor.rollout.max_new_tokens")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch default); 1 because these small matmuls gain "
        "little from a second thread and two threads collapse when other work shares the cores",
    )
    return p.parse_args(argv)


def load_configs(
    args: argparse.Namespace, model: str
) -> tuple[LearnerConfig, RolloutConfig, EstimatorConfig]:
    data = expand_run(load_toml(args.config))
    learner = dict(data.get("learner", {}), model=model)
    if args.batch_size:
        learner["batch_size"] = args.batch_size
    rollout = dict(data.get("actor", {}).get("rollout", {}))
    if args.max_new_tokens:
        rollout["max_new_tokens"] = args.max_new_tokens
    estimator = {k: v for k, v in data.get("estimator", {}).items() if k in ("n_reset", "mc")}
    return (
        from_mapping(LearnerConfig, learner, "learner"),
        from_mapping(RolloutConfig, rollout, "actor.rollout"),
        from_mapping(EstimatorConfig, estimator, "estimator"),
    )


def system_batch(args: argparse.Namespace, model: str) -> tuple[LearnerConfig, list[Sample]]:
    """The config's `[learner]` on `model`, and a batch built as the system builds it
    (`build_batch`) on the tiny base policy's task."""
    from ops.tiny_policy.bootstrap import BootstrapConfig

    boot = BootstrapConfig()
    learner, rollout, estimator = load_configs(args, model)
    task = load_task(boot.task_spec, **boot.task_options())
    return learner, build_batch(model, task, learner, rollout, estimator)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    load_configs(args, args.model or "bootstrap")  # a config mistake: one line, before a build
    if args.threads:
        torch.set_num_threads(args.threads)
    from ops.tiny_policy.bootstrap import BootstrapConfig, bootstrap

    model = args.model or str(bootstrap(BootstrapConfig()))
    learner, samples = system_batch(args, model)
    policy = build_policy(learner)
    rows = run(policy, samples, learner, args.repeats)
    mbs = len(plan_micro_batches([len(s.token_ids) for s in samples], learner.token_budget))
    print(
        f"model {model}; {len(samples)} samples; torch threads {torch.get_num_threads()}; "
        f"median of {args.repeats} alternating rounds\n"
    )
    print(format_table(rows))
    text = reading(rows, samples, learner, mbs, on_policy_step(policy, learner))
    print("\n" + text)
    if args.write_results:
        write_bench_section("learner", argv, markdown_table(HEADER, table_rows(rows)), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
