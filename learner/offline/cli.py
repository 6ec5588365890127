"""`gpo offline pairs|train`: offline GPO (GPO.md step 7) from the command line.

gpo offline pairs --model M --task T --out pairs.jsonl [--prompts N] [--baseline]
    sample trajectories with the transformers engine, branch at each one's critical step,
    write preference pairs (`learner.offline.pairs`); `--baseline` writes whole-trajectory
    pairs instead.
gpo offline train --method dpo|kto|simpo|orpo --pairs pairs.jsonl --model M --out DIR
    train a LoRA adapter on the pairs with TRL (`learner.offline.train`, the `offline`
    extra); DIR is a peft adapter directory.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

from actors.engines.base import SamplingSettings
from actors.mc_config import paper_search
from learner.offline.pairs import (
    PairConfig,
    PreferencePair,
    critical_step_pairs,
    whole_trajectory_pairs,
    write_pairs,
)
from learner.offline.settings import TrainArgs, field_defaults
from protocol.process import UserError

PAIRS = field_defaults(PairConfig)
TRAIN = field_defaults(TrainArgs)
MAX_NEW_TOKENS = 128
"""Longest sampled completion for pairs: room for the steps of any task (the demo's actors
stop at 48 on the arithmetic task)."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gpo offline", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pairs", help="write critical-step (or whole-trajectory) pairs")
    p.add_argument("--model", required=True, help="policy model directory")
    p.add_argument("--task", default="arithmetic", help="task name or module:Class")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--prompts", type=int, default=32, help="training prompts to use")
    p.add_argument("--baseline", action="store_true", help="whole-trajectory pairs")
    p.add_argument("--samples", type=int, default=PAIRS["samples"], help="trajectories per prompt")
    p.add_argument("--k", type=int, default=PAIRS["mc"].k, help="MC continuations per boundary")
    p.add_argument(
        "--branch-n", type=int, default=PAIRS["branch_n"], help="continuations per extra round"
    )
    p.add_argument(
        "--branch-rounds", type=int, default=PAIRS["branch_rounds"], help="extra rounds at most"
    )
    p.add_argument("--temperature", type=float, default=PAIRS["sampling"].temperature)
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--seed", type=int, default=PAIRS["seed"])
    t = sub.add_parser("train", help="train a LoRA adapter on pairs with TRL")
    t.add_argument("--method", required=True, choices=["dpo", "kto", "simpo", "orpo"])
    t.add_argument("--pairs", required=True, help="pairs JSONL file")
    t.add_argument("--model", required=True, help="base model directory")
    t.add_argument("--out", required=True, help="adapter output directory")
    t.add_argument("--steps", type=int, default=TRAIN["steps"], help="optimizer steps")
    t.add_argument("--batch", type=int, default=TRAIN["batch"], help="pairs per step")
    t.add_argument("--lr", type=float, default=TRAIN["lr"], help="AdamW learning rate")
    t.add_argument("--beta", type=float, default=TRAIN["beta"], help="preference strength")
    t.add_argument("--lora-rank", type=int, default=TRAIN["lora_rank"])
    t.add_argument("--seed", type=int, default=TRAIN["seed"])
    return ap


async def make_pairs(args: argparse.Namespace) -> list[PreferencePair]:
    """Pairs for the first `args.prompts` training prompts of the task."""
    from transformers import AutoTokenizer

    from actors.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
    from actors.steps import StepConfig, token_spans
    from actors.tasks.base import StepSplitter, load_task

    task = load_task(args.task)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    decode = functools.partial(tokenizer.decode, skip_special_tokens=True)
    splitter = task.split_steps if isinstance(task, StepSplitter) else None
    split = functools.partial(
        token_spans, tokenizer=tokenizer, config=StepConfig(), splitter=splitter
    )
    sampling = SamplingSettings(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    config = PairConfig(
        samples=args.samples,
        branch_n=args.branch_n,
        branch_rounds=args.branch_rounds,
        sampling=sampling,
        mc=paper_search(k=args.k),
        seed=args.seed,
    )
    engine = TransformersEngine(TransformersEngineConfig(model=args.model))
    pairs: list[PreferencePair] = []
    try:
        for i, prompt in enumerate(task.train_prompts()[: args.prompts]):
            ids = list(tokenizer(prompt.text)["input_ids"])
            if args.baseline:
                found = await whole_trajectory_pairs(
                    engine, task, prompt, ids, prompt.id, config, decode=decode, index=i
                )
            else:
                found = await critical_step_pairs(
                    engine,
                    task,
                    prompt,
                    ids,
                    prompt.id,
                    config,
                    decode=decode,
                    split=split,
                    index=i,
                )
            pairs += found
    finally:
        await engine.close()
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not (Path(args.model).expanduser() / "config.json").is_file():
        raise UserError(f"--model {args.model}: not a model directory (no config.json)")
    if args.command == "train" and not Path(args.pairs).is_file():
        raise UserError(f"--pairs {args.pairs}: no such file (write it with `gpo offline pairs`)")
    if args.command == "pairs":
        pairs = asyncio.run(make_pairs(args))
        n = write_pairs(args.out, pairs)
        kind = "whole-trajectory" if args.baseline else "critical-step"
        print(f"wrote {n} {kind} pairs from {args.prompts} prompts to {args.out}")
        return 0
    from learner.offline.train import train

    losses = train(
        TrainArgs(
            method=args.method,
            pairs=args.pairs,
            model=args.model,
            out=args.out,
            steps=args.steps,
            batch=args.batch,
            lr=args.lr,
            beta=args.beta,
            lora_rank=args.lora_rank,
            seed=args.seed,
        )
    )
    print(f"{args.method}: loss {losses[0]:.4f} -> {losses[-1]:.4f}; adapter in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
