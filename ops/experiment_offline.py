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
3. DPO (`learner.offline_train`, TRL) trains one LoRA adapter per arm with the same steps,
   batch, learning rate, beta and seed;
4. held-out pass@1 (`ops.evaluate`, the learner's evaluation: 500 held-out prompts, one
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
import math
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ops.results import machine_line, markdown_table, write_section

ARMS = ("base", "critical", "whole")
LABELS = {"base": "base policy", "critical": "critical-step DPO", "whole": "whole-trajectory DPO"}
SECTION = "offline-dpo"


@dataclass(frozen=True)
class Settings:
    """Everything that changes a seed's result (stored in its results.json)."""

    pairs: int = 256
    """Pairs per arm wanted; both arms are cut to the smaller count found."""
    max_prompts: int = 1000
    """Training prompts an arm reads at most while looking for `pairs` pairs."""
    samples: int = 4
    """Trajectories per prompt in the critical-step arm (each gives at most one pair)."""
    k: int = 4
    """MC continuations per step boundary (critical-step search)."""
    branch_n: int = 4
    """Continuations per extra round when looking for a win and a loss."""
    branch_rounds: int = 3
    """Extra rounds at most (the whole-trajectory arm gets one more: it starts empty)."""
    max_new_tokens: int = 48
    """Longest sampled completion, in tokens (as the demo's actors)."""
    steps: int = 100
    """DPO optimizer steps (as `gpo offline train`; about 3 passes over 256 pairs)."""
    batch: int = 8
    """Pairs per DPO step (as `gpo offline train`)."""
    lr: float = 5e-4
    """AdamW learning rate of the LoRA weights, constant (as `gpo offline train`)."""
    beta: float = 0.1
    """DPO beta (as `gpo offline train`)."""
    lora_rank: int = 8
    """LoRA rank (alpha = 2r on the attention projections)."""
    eval_prompts: int = 500
    """Held-out prompts scored per evaluation."""


# --- pure parts -------------------------------------------------------------------------


def spread(pairs: Sequence[dict], n: int) -> list[dict]:
    """`n` of `pairs`, taken round-robin over prompts (first pair of every prompt, then
    second pairs, ...), prompts in order of first appearance; the kept pairs stay in their
    original order."""
    by_prompt: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        by_prompt.setdefault(p["prompt_id"], []).append(i)
    order = [
        idx[r]
        for r in range(max((len(v) for v in by_prompt.values()), default=0))
        for idx in by_prompt.values()
        if r < len(idx)
    ]
    return [pairs[i] for i in sorted(order[: max(n, 0)])]


def cut_to_equal(a: Sequence[dict], b: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """Both arms cut to the smaller of their counts with `spread`."""
    n = min(len(a), len(b))
    return spread(a, n), spread(b, n)


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def aggregate(results: Sequence[dict]) -> dict:
    """Mean and std over seeds of each arm's pass@1 and of the paired differences."""
    score = {arm: [r["pass_at_1"][arm] for r in results] for arm in ARMS}
    diffs = {
        "critical - whole": [c - w for c, w in zip(score["critical"], score["whole"])],
        "critical - base": [c - b for c, b in zip(score["critical"], score["base"])],
        "whole - base": [w - b for w, b in zip(score["whole"], score["base"])],
    }
    return {
        "n_seeds": len(results),
        "arms": {arm: mean_std(v) for arm, v in score.items()},
        "diffs": {name: mean_std(v) for name, v in diffs.items()},
        "per_seed_diffs": diffs,
    }


def pm(mean: float, std: float, signed: bool = False) -> str:
    return f"{mean:+.3f} ± {std:.3f}" if signed else f"{mean:.3f} ± {std:.3f}"


def tables(results: Sequence[dict]) -> str:
    """Per-seed table and the mean ± std row, then the paired differences."""
    agg = aggregate(results)
    n_eval = results[0]["settings"]["eval_prompts"]
    header = ["seed", *(LABELS[a] for a in ARMS), "critical - whole", "pairs per arm", "minutes"]
    rows = [
        [
            r["seed"],
            *(f"{r['pass_at_1'][a]:.3f}" for a in ARMS),
            f"{r['pass_at_1']['critical'] - r['pass_at_1']['whole']:+.3f}",
            r["pairs"]["used"],
            f"{r['seconds']['total'] / 60:.1f}",
        ]
        for r in results
    ]
    rows.append(
        [
            f"mean ± std ({agg['n_seeds']} seeds)",
            *(pm(*agg["arms"][a]) for a in ARMS),
            pm(*agg["diffs"]["critical - whole"], signed=True),
            "",
            f"{sum(r['seconds']['total'] for r in results) / 60:.1f} in all",
        ]
    )
    diff_rows = [
        [name, pm(*ms, signed=True), " ".join(f"{d:+.3f}" for d in agg["per_seed_diffs"][name])]
        for name, ms in agg["diffs"].items()
    ]
    pair_rows = [
        [
            r["seed"],
            r["pairs"]["critical_found"],
            r["pairs"]["critical_prompts"],
            r["pairs"]["whole_found"],
            r["pairs"]["whole_prompts"],
            r["pairs"]["used"],
            f"{r['seconds']['pairs_critical']:.0f} / {r['seconds']['pairs_whole']:.0f}",
        ]
        for r in results
    ]
    return "\n\n".join(
        [
            f"Held-out pass@1 ({n_eval} prompts, one sample each at temperature 1; the three "
            "arms of a seed share the sampling seed):",
            markdown_table(header, rows),
            "Paired differences (per seed, then mean ± std over seeds):",
            markdown_table(["difference", "mean ± std", "per seed"], diff_rows),
            "Pairs found (and the prompts read to find them) before the cut to equal counts:",
            markdown_table(
                [
                    "seed",
                    "critical-step pairs",
                    "prompts",
                    "whole-trajectory pairs",
                    "prompts",
                    "used per arm",
                    "pair seconds (critical / whole)",
                ],
                pair_rows,
            ),
        ]
    )


def verdict(mean: float, spread: float, n: int) -> str:
    """Whether a mean paired difference over `n` seeds stands out from its spread."""
    if n < 2:
        return "one seed has no spread: no evidence either way"
    if abs(mean) > 2 * spread:
        return f"more than twice its spread of {spread:.3f}: larger than the noise"
    if abs(mean) > spread:
        return f"between one and two times its spread of {spread:.3f}: suggestive, not shown"
    return f"within its spread of {spread:.3f}: no difference shown"


def _both_below(base: float, critical: float, whole: float, se: float) -> str:
    if max(critical, whole) < base - 2 * se:
        return (
            " Both DPO runs end below the base policy: with these settings, DPO on pairs "
            "sampled from the policy itself hurts it, so the arms compare two losses, not "
            "two gains."
        )
    return ""


def reading(results: Sequence[dict]) -> str:
    """One paragraph stating what the numbers show, including whether each difference
    exceeds its spread: the std over seeds of the per-seed paired differences, floored at one
    evaluation's binomial standard error (a std over three seeds can be small by chance)."""
    agg = aggregate(results)
    n = agg["n_seeds"]
    n_eval = results[0]["settings"]["eval_prompts"]
    (b, b_sd), (c, c_sd), (w, w_sd) = (agg["arms"][a] for a in ARMS)
    se = math.sqrt(max(b * (1 - b), 0.0) / n_eval)
    wins = sum(x > 0 for x in agg["per_seed_diffs"]["critical - whole"])
    v = {k: (m, verdict(m, max(sd, se), n)) for k, (m, sd) in agg["diffs"].items()}
    return (
        f"Reading: over {n} seed{'s' * (n != 1)}, the base policy scores {pm(b, b_sd)}, "
        f"critical-step DPO {pm(c, c_sd)} and whole-trajectory DPO {pm(w, w_sd)}. "
        f"Critical-step minus whole-trajectory is {v['critical - whole'][0]:+.3f} on average "
        f"(ahead on {wins} of {n} seeds), {v['critical - whole'][1]}. Against the base "
        f"policy, critical-step DPO moves {v['critical - base'][0]:+.3f}, "
        f"{v['critical - base'][1]}; whole-trajectory DPO moves {v['whole - base'][0]:+.3f}, "
        f"{v['whole - base'][1]}.{_both_below(b, c, w, se)} The spread of a difference is its standard deviation over "
        f"seeds, but at least one evaluation's binomial standard error ({se:.3f} at "
        f"{n_eval} prompts); the base policy's own spread over seeds ({b_sd:.3f}) is "
        "evaluation noise alone (same weights, other draws). This is a tiny character-level "
        "model on a synthetic task, a few hundred pairs and a short DPO run with untuned "
        "settings, not the paper's 7B setting: it tests the pipeline and the direction of "
        "the effect here, not the paper's claim."
    )


def report(results: Sequence[dict], command: str, machine: str) -> str:
    """The body of section `offline-dpo`."""
    s = results[0]["settings"]
    settings = (
        f"Settings: tiny base policy of `gpo bootstrap` ({results[0]['model']}); "
        f"{s['pairs']} pairs wanted per arm (at most {s['max_prompts']} prompts read), "
        f"critical-step arm {s['samples']} trajectories per prompt, K = {s['k']} MC "
        f"continuations per boundary, win/loss search {s['branch_n']} continuations x "
        f"{s['branch_rounds']} extra rounds, {s['max_new_tokens']} new tokens at most, "
        f"temperature 1; DPO (TRL, sigmoid loss) with LoRA r = {s['lora_rank']} on the "
        f"attention projections, {s['steps']} steps of {s['batch']} pairs, lr {s['lr']:g} "
        f"constant, beta {s['beta']} (the defaults of `gpo offline train`); evaluation on "
        f"{s['eval_prompts']} held-out prompts, {s['max_new_tokens']} new tokens."
    )
    minutes = {
        part: sum(v for r in results for k, v in r["seconds"].items() if k.startswith(part)) / 60
        for part in ("pairs", "train", "eval", "total")
    }
    runtime = (
        f"Runtime: {minutes['total']:.1f} minutes for {len(results)} seeds (pairs "
        f"{minutes['pairs']:.1f}, DPO {minutes['train']:.1f}, evaluations {minutes['eval']:.1f}); "
        "the defaults are sized for about 15 minutes of this 2-core machine for three seeds."
    )
    return "\n\n".join(
        [
            f"Command: `{command}`",
            f"Machine: {machine}",
            tables(results),
            settings,
            runtime,
            reading(results),
        ]
    )


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
    from learner.offline_pairs import PairConfig, critical_step_pairs, whole_trajectory_pairs

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
    from learner.offline_train import TrainArgs, train

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
    from ops.evaluate import EvalArgs, evaluate

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
    ap = argparse.ArgumentParser(
        prog="gpo experiment offline",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    ap.add_argument("--write-results", action="store_true", help="write docs/RESULTS.md")
    return ap


def run_all(args: argparse.Namespace, out: Path, command: str) -> int:
    """Run every seed of `args.seeds` that has no results with these settings yet."""
    import torch
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils import logging as hf_logging

    from ops.evaluate import resolve_model
    from protocol.process import UserError

    torch.set_num_threads(args.threads)
    disable_progress_bar()
    hf_logging.disable_progress_bar()
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    try:
        model_dir = resolve_model(args.model)
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
