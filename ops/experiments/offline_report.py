"""What `gpo experiment offline` reports, as pure functions over its per-seed results: the
pairs spread over prompts, the mean and spread per arm, the tables, the verdict and the
reading written into docs/RESULTS.md (ops/experiments/offline.py runs the seeds)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from ops.harness import markdown_table

ARMS = ("base", "critical", "whole")
LABELS = {"base": "base policy", "critical": "critical-step DPO", "whole": "whole-trajectory DPO"}


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
