"""`gpo experiment offline`: DPO on critical-step pairs against DPO on whole-trajectory pairs.

    gpo experiment offline [--seeds 0 1 2] [--pairs 256] [--steps 64] [--out DIR]
                           [--write-results] [--report-only]

The offline half of GPO (GPO.md step 7) on the synthetic arithmetic task with the tiny base
policy (`gpo bootstrap`). For each seed:

1. pairs: walk the task's training prompts in a seeded order; the critical-step arm
   (`critical_step_pairs`: branch at each sampled trajectory's critical step until one win
   and one loss) and the whole-trajectory arm (`whole_trajectory_pairs`: one correct and one
   wrong full completion of the prompt) each take prompts from the start of that order until
   they hold `--pairs` pairs. A prompt gives up to `samples` critical-step pairs but at most
   one whole-trajectory pair, so the baseline reads about three times as many prompts (a
   superset of the critical arm's);
2. both arms are cut to the same number of pairs, taking prompts round-robin (`spread`) so a
   cut drops pairs of prompts that gave many, not whole prompts;
3. DPO (`learner.offline.train`, TRL) trains one LoRA adapter per arm with the same steps,
   batch, learning rate, beta and seed;
4. held-out pass@1 (`ops.heldout`, the learner's evaluation: 500 held-out prompts, one
   sample each at temperature 1) of the base policy and of both adapters, with the same
   sampling seed for the three, so they are compared on the same draws.

Seeds change the prompt order, every sampling seed of the pairs, the LoRA init, the data
order and the evaluation draws. Cost with the defaults, measured on 2 CPU cores shared with
other work (load average 8-13): 9.7 minutes for three seeds, 3-4 a seed (pairs about 2
minutes, each DPO run 25-45 s, each evaluation a few seconds); sized to stay within about
15 minutes.

Output: `DIR/seed-<s>/` holds both pair files (as cut), both adapters, the DPO logs and
`results.json`; a seed whose `results.json` has the same settings is not run again, so an
interrupted experiment resumes. `--report-only` rebuilds the table from the `results.json`
files. The report (printed; with `--write-results` section `offline-dpo` of docs/RESULTS.md)
gives pass@1 per seed, mean and standard deviation over seeds, the paired differences, the
pair counts and the settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from learner.offline.cli import PAIRS, TRAIN
from ops.experiments.offline_report import ARMS, LABELS, cut_to_equal, report
from ops.harness import machine_line, parser, write_section

SECTION = "offline-dpo"


@dataclass(frozen=True)
class Settings:
    """Everything that changes a seed's result (stored in its results.json)."""

    pairs: int = 256
    """Pairs per arm wanted; both arms are cut to the smaller count found."""
    max_prompts: int = 1000
    """Training prompts an arm reads at most while looking for `pairs` pairs."""
    samples: int = PAIRS["samples"]
    """Trajectories per prompt in the critical-step arm (each gives at most one pair)."""
    k: int = PAIRS["mc"].k
    """MC continuations per step boundary (critical-step search)."""
    branch_n: int = PAIRS["branch_n"]
    """Continuations per extra round when looking for a win and a loss."""
    branch_rounds: int = PAIRS["branch_rounds"]
    """Extra rounds at most (the whole-trajectory arm gets one more: it starts empty)."""
    max_new_tokens: int = 48
    """Longest sampled completion, in tokens (as the demo's actors)."""
    steps: int = TRAIN["steps"]
    """DPO optimizer steps (as `gpo offline train`; about 3 passes over 256 pairs)."""
    batch: int = TRAIN["batch"]
    """Pairs per DPO step (as `gpo offline train`)."""
    lr: float = TRAIN["lr"]
    """AdamW learning rate of the LoRA weights, constant (as `gpo offline train`)."""
    beta: float = TRAIN["beta"]
    """DPO beta (as `gpo offline train`)."""
    lora_rank: int = TRAIN["lora_rank"]
    """LoRA rank (alpha = 2r on the attention projections)."""
    eval_prompts: int = 500
    """Held-out prompts scored per evaluation."""


# --- running ----------------------------------------------------------------------------


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def collect_pairs(
    model_dir: Path,
    prompts: Sequence,
    settings: Settings,
    seed: int,
    baseline: bool,
    report_progress: Callable[[int, int], None],
) -> tuple[list[dict], int]:
    """Pairs of one arm from prompts in order until `settings.pairs` (or the prompts run
    out); returns (pair records, prompts read)."""
    from transformers import AutoTokenizer

    from actors.engines.base import SamplingSettings
    from actors.engines.transformers_engine import TransformersEngine, TransformersEngineConfig
    from actors.mc_config import paper_search
    from actors.steps import StepConfig, token_spans
    from actors.tasks.base import StepSplitter
    from learner.offline.pairs import PairConfig, critical_step_pairs, whole_trajectory_pairs

    task = base_task(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    decode = functools.partial(tokenizer.decode, skip_special_tokens=True)
    splitter = task.split_steps if isinstance(task, StepSplitter) else None
    split = functools.partial(
        token_spans, tokenizer=tokenizer, config=StepConfig(), splitter=splitter
    )
    config = PairConfig(
        samples=settings.samples,
        branch_n=settings.branch_n,
        branch_rounds=settings.branch_rounds,
        sampling=SamplingSettings(temperature=1.0, max_new_tokens=settings.max_new_tokens),
        mc=paper_search(k=settings.k),
        seed=seed,
    )
    engine = TransformersEngine(TransformersEngineConfig(model=str(model_dir)))
    pairs: list[dict] = []
    read = 0
    try:
        for i, prompt in enumerate(prompts):
            if len(pairs) >= settings.pairs:
                break
            ids = list(tokenizer(prompt.text)["input_ids"])
            args = (engine, task, prompt, ids, prompt.id, config)
            if baseline:
                found = await whole_trajectory_pairs(*args, decode=decode, index=i)
            else:
                found = await critical_step_pairs(*args, decode=decode, split=split, index=i)
            pairs += [dataclasses.asdict(p) for p in found]
            read = i + 1
            report_progress(len(pairs), read)
    finally:
        await engine.close()
    return pairs, read


def base_task(model_dir: Path):
    """The task the base policy was trained on, with its options (bootstrap.json)."""
    from actors.tasks.base import load_task

    meta = json.loads((model_dir / "bootstrap.json").read_text())
    return load_task(meta["task"], **meta["task_options"])


def _throttled(label: str, start: float, every: float = 10.0) -> Callable[[int, int], None]:
    last = [start]

    def report(pairs: int, prompts: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            _say(f"{label}: {pairs} pairs from {prompts} prompts, {now - start:.0f} s")

    return report


def train_arm(model_dir: Path, pairs_file: Path, out: Path, settings: Settings, seed: int):
    """DPO on one arm's pairs; the TRL log goes to `out`.log. Returns (first, last) loss."""
    from learner.offline.train import TrainArgs, train

    log = out.with_suffix(".log")
    with open(log, "w") as f, contextlib.redirect_stdout(f):
        losses = train(
            TrainArgs(
                method="dpo",
                pairs=str(pairs_file),
                model=str(model_dir),
                out=str(out),
                steps=settings.steps,
                batch=settings.batch,
                lr=settings.lr,
                beta=settings.beta,
                lora_rank=settings.lora_rank,
                seed=seed,
            )
        )
    return losses[0], losses[-1]


def run_seed(model_dir: Path, settings: Settings, seed: int, out: Path, command: str) -> dict:
    """Pairs, two DPO runs and three evaluations for one seed; writes out/results.json."""
    from ops.heldout import EvalArgs, evaluate

    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    seconds: dict[str, float] = {}
    prompts = list(base_task(model_dir).train_prompts())
    random.Random(f"offline-experiment:{seed}").shuffle(prompts)
    prompts = prompts[: settings.max_prompts]
    found, read = {}, {}
    for arm, baseline in (("critical", False), ("whole", True)):
        t = time.monotonic()
        label = f"seed {seed} {LABELS[arm]} pairs"
        found[arm], read[arm] = asyncio.run(
            collect_pairs(model_dir, prompts, settings, seed, baseline, _throttled(label, t))
        )
        seconds[f"pairs_{arm}"] = time.monotonic() - t
        _say(
            f"{label}: {len(found[arm])} from {read[arm]} prompts in {seconds[f'pairs_{arm}']:.0f} s"
        )
    used = dict(zip(("critical", "whole"), cut_to_equal(found["critical"], found["whole"])))
    scores: dict[str, float] = {}
    losses: dict[str, tuple[float, float]] = {}
    for arm in ARMS:
        adapter = None
        if arm != "base":
            pairs_file = out / f"pairs-{arm}.jsonl"
            pairs_file.write_text("".join(json.dumps(p) + "\n" for p in used[arm]))
            t = time.monotonic()
            adapter = out / f"dpo-{arm}"
            losses[arm] = train_arm(model_dir, pairs_file, adapter, settings, seed)
            seconds[f"train_{arm}"] = time.monotonic() - t
            _say(
                f"seed {seed} {LABELS[arm]}: {len(used[arm])} pairs, loss {losses[arm][0]:.3f} "
                f"-> {losses[arm][1]:.3f} in {seconds[f'train_{arm}']:.0f} s"
            )
        t = time.monotonic()
        record = evaluate(
            EvalArgs(
                model=str(model_dir),
                adapter=str(adapter) if adapter else None,
                prompts=settings.eval_prompts,
                seed=seed,
                max_new_tokens=settings.max_new_tokens,
            ),
            progress=False,
        )
        scores[arm] = record["pass_at_1"]
        seconds[f"eval_{arm}"] = time.monotonic() - t
        _say(f"seed {seed} {LABELS[arm]}: held-out pass@1 {scores[arm]:.3f}")
    seconds["total"] = time.monotonic() - start
    result = {
        "seed": seed,
        "command": command,
        "model": str(model_dir),
        "settings": dataclasses.asdict(settings),
        "pass_at_1": scores,
        "dpo_loss_first_last": losses,
        "pairs": {
            "critical_found": len(found["critical"]),
            "critical_prompts": read["critical"],
            "whole_found": len(found["whole"]),
            "whole_prompts": read["whole"],
            "used": len(used["critical"]),
            "critical_distinct_prompts_used": len({p["prompt_id"] for p in used["critical"]}),
            "whole_distinct_prompts_used": len({p["prompt_id"] for p in used["whole"]}),
        },
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "machine": machine_line(),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_results(out: Path, seeds: Sequence[int] | None = None) -> list[dict]:
    """The results.json of every seed under `out` (of `seeds` only, when given), by seed."""
    results = [json.loads(p.read_text()) for p in sorted(out.glob("seed-*/results.json"))]
    if seeds is not None:
        results = [r for r in results if r["seed"] in seeds]
    return sorted(results, key=lambda r: r["seed"])


def _parser() -> argparse.ArgumentParser:
    ap = parser("gpo experiment offline", __doc__.split("\n")[0])
    d = Settings()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--model", default="bootstrap", help="base policy dir with bootstrap.json")
    ap.add_argument("--out", default="runs/experiment-offline", help="results directory")
    for f in dataclasses.fields(Settings):
        ap.add_argument(
            "--" + f.name.replace("_", "-"), type=type(f.default), default=getattr(d, f.name)
        )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from DIR")
    return ap


def run_all(args: argparse.Namespace, out: Path, command: str) -> int:
    """Run every seed of `args.seeds` that has no results with these settings yet."""
    import torch
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    from ops.heldout import find_model_dir
    from protocol.process import UserError

    torch.set_num_threads(args.threads)
    disable_progress_bar()
    hf_logging.disable_progress_bar()
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    try:
        model_dir = find_model_dir(args.model)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not (model_dir / "bootstrap.json").is_file():
        print(
            f"error: {model_dir}: no bootstrap.json (not a `gpo bootstrap` policy)", file=sys.stderr
        )
        return 2
    start = time.monotonic()
    for i, seed in enumerate(args.seeds):
        done = out / f"seed-{seed}" / "results.json"
        if done.is_file() and json.loads(done.read_text())["settings"] == dataclasses.asdict(
            settings
        ):
            _say(f"seed {seed}: results exist in {done}, not run again")
            continue
        _say(f"seed {seed} ({i + 1}/{len(args.seeds)}), {time.monotonic() - start:.0f} s so far")
        run_seed(model_dir, settings, seed, out / f"seed-{seed}", command)
    _say(f"experiment: {time.monotonic() - start:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    out = Path(args.out)
    command = " ".join(["gpo", "experiment", "offline", *map(shlex.quote, argv)])
    if not args.report_only and (code := run_all(args, out, command)):
        return code
    results = load_results(out, args.seeds)
    if not results:
        print(f"error: no seed-*/results.json under {out}", file=sys.stderr)
        return 2
    if any(r["settings"] != results[0]["settings"] for r in results):
        print(f"error: the seeds under {out} were run with different settings", file=sys.stderr)
        return 2
    body = report(results, results[0]["command"], results[-1]["machine"])
    print(body)
    if args.write_results:
        print(f"wrote section {SECTION} of {write_section(SECTION, body)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
