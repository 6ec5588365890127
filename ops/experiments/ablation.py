"""`gpo experiment ablation`: GPO against its baselines, several seeds, at equal updates and
at equal wall-clock.

    gpo experiment ablation [--study selection|clip|advantage|budget|pivot|pivot-map|all]
                            [--seeds 0 1 2] [--minutes 3] [--write-results] [--report-only]

Each run is a whole `gpo launch` of a study's configuration (learner, 1 actor, 1 estimator,
private redis-server, a tiny base policy; `demo.toml`: the arithmetic task, `pivot.toml`:
the pivot task) for `--minutes`, with one arm's fields switched by `--set` and the seed of
the learner, the actor and the estimator set to the run's seed. Studies (GPO.md: baselines
by switching one field; `all` runs the demo's):

- `selection`: GPO (`advantage`, `mc` advantages, batches of exactly half resets, reset
  rollouts baselined leave-one-out) against arms that differ from it or from each other in
  one thing: PPO with the same estimator (`mc`: `none`, no resets; `group`: plain PPO,
  no MC search; `gae`), GPO with the `group` and `gae` estimators, `random` reset, GPO at
  PPO's fresh data per update (64 fresh + 64 resets), and GPO with the former reset baseline
  V(s_m); paired tables against GPO, against plain PPO, and for each one-thing pair;
- `clip`: GPO and PPO (`group`) with 4 minibatches per batch, where PPO's clip binds (the
  default's single optimizer step per batch runs at ratio 1);
- `pivot` (run with `--seeds 0 1 2 3 4 --minutes 15`): on the pivot task, where one step of
  a long chain decides the outcome, plain PPO against GPO with the same estimator (`group`),
  GPO with MC advantages, random reset and PPO with MC advantages; compared at equal
  updates, equal generated tokens (every actor and estimator) and equal wall-clock;
- `pivot-map` (`--seeds 0 1 2 --minutes 15`): GPO - PPO (`group`) in each cell of chain
  length (8, 16 steps) x pivot difficulty (a 1- or 2-digit factor), the base policy
  bootstrapped on each cell's task;
- `advantage`: under GPO, the learner's advantages `mc` (VinePPO-style), `group`
  (GRPO-style), `gae` (value head, the paper's);
- `budget`: the MC search under GPO: the default (failed trajectories only, bisection with
  K = 4, shared states, the continuations at s_m trained as the resets), the paper's
  (`gpo-paper`: uniform K = 4 at every boundary of every rollout, resets drawn by the
  actors) and the paper's with the two savings alone (`gpo-lean`: shared states and reused
  continuations); does the cheaper search cost learning (`gpo bench gpo-overhead`: what it
  saves)?

An arm shared by several studies of one config runs once. Runs go seed-major, arms
interleaved, so a slow patch of a shared machine falls on every arm alike. A finished run
leaves a small summary in docs/results/ablation/<config>/ (commit it): a run whose summary
has the same settings is not run again, so an experiment resumes after an interruption, on
another machine too, and the report is rebuilt from the summaries.

Read-out (ops/experiments/ablation_report.py), from each run's own learner log (`learner/run_log.jsonl`): held-out pass@1 (500
prompts, temperature 1) every `--eval-every` updates, the same cadence for every arm. "Equal
wall-clock" compares the arms at the training time every run of the study reached (T),
where training time is the learner's clock less the time it spent evaluating (an evaluation
stops the learner, and arms that update faster evaluate more often). "Equal updates"
compares two arms at the largest update count every run of both reached (U; arms differ a
lot in updates per minute, so U is taken per pair). One number per run is the mean of its
evaluations in the last third of the window ((2T/3, T] or (2U/3, U]), which averages out
some of the noise of single evaluations; tables give mean, standard deviation and range
over seeds, and paired differences.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from actors.estimator import EstimatorConfig
from ops.experiments.ablation_report import Curve, read_curve, study_report
from ops.experiments.ablation_studies import STUDIES, arm_sets
from ops.harness import PLOTS, parser, write_section
from ops.run_setup import bootstrap_fields, split_sets, validate_roles
from protocol.config import apply_sets, from_mapping, load_toml

ROOT = Path(__file__).resolve().parents[2]
SUMMARIES = PLOTS / "ablation"
"""One small JSON per finished run (`<arm>-s<seed>.json`: its settings and its curve),
committed with the results: a rerun skips a run whose summary has the same settings, so an
experiment longer than a session resumes on another machine, and the report is rebuilt from
the summaries alone."""

# ------------------------------------------------------------------ running


def run_id(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


def run_settings(arm: str, seed: int, minutes: float, eval_every: int, config: Path) -> dict:
    """What makes a run: the config, its length, the `--set` fields of its arm and seed and,
    where the run searches, the MC search the estimator resolves them to (`search`), so a
    summary made under other search defaults is not taken for this run."""
    sets = run_sets(arm, seed, eval_every)
    settings: dict = {"config": config.name, "minutes": minutes, "sets": sets}
    if (search := resolved_search(config, sets)) is not None:
        settings["search"] = search
    policy = pinned_policy(config, sets)
    if policy is not None:  # a run of a pinned config is that policy's
        settings["policy"] = (
            policy_sha(policy) if (policy / "model.safetensors").is_file() else None
        )
    return settings


def run_sets(arm: str, seed: int, eval_every: int) -> dict[str, str]:
    """The `--set` fields of a run: its seed everywhere, the evaluation cadence, its arm."""
    return {
        "learner.seed": str(seed),
        "actor.rollout.seed": str(seed),
        "estimator.rollout.seed": str(seed),
        "learner.eval.every": str(eval_every),
        **arm_sets(arm),
    }


def resolved_search(config: Path, sets: dict[str, str]) -> dict | None:
    """The estimator's search fields (budget, K, targets, chooser, screening, shared states,
    reused continuations) as config and sets resolve them; None when the run has no MC
    search (selection `none` without MC values)."""
    data = apply_sets(load_toml(config), [f"{k}={v}" for k, v in sets.items()])
    est = from_mapping(EstimatorConfig, data.get("estimator", {}), "estimator")
    if est.mc.selection == "none" and not est.mc_values:
        return None
    mc = est.mc
    return {
        "budget": mc.budget,
        "k": mc.k,
        "targets": mc.targets,
        "chooser": mc.chooser,
        "screen": mc.screen,
        "share_states": mc.share_states,
        "reuse_mc_rollouts": est.reuse_mc_rollouts,
    }


PINNED = ("pivot.toml",)
"""Configs whose studies outlast a session: every run of such a study uses one committed base
policy per task setting (`pinned_policy`), not the bootstrap cache of the machine it runs on:
the bootstrap's SFT is not bit-identical across CPUs, and its stopping rule (the first
evaluation inside the per-step bands) then stops at another step with another policy."""

POLICY_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "bootstrap.json",
)


def pinned_policy(config: Path, sets: dict[str, str], build: bool = False) -> Path | None:
    """The committed base policy of a pinned config's runs with `sets` (one per bootstrap
    setting, under `SUMMARIES/<config>/policies/<cache key>/`); None for other configs. With
    `build`, a missing one is built (`gpo bootstrap`) and copied there, to be committed."""
    if config.name not in PINNED:
        return None
    from ops.tiny_policy.bootstrap import BootstrapConfig, bootstrap

    data = apply_sets(load_toml(config), [f"{k}={v}" for k, v in sets.items()])
    fields = bootstrap_fields(data.get("run", {}), data.get("launch", {}).get("bootstrap", {}))
    boot = from_mapping(BootstrapConfig, fields, "launch.bootstrap")
    where = SUMMARIES / config.stem / "policies" / boot.cache_key()
    if not (where / "model.safetensors").is_file() and build:
        built = bootstrap(boot)
        where.mkdir(parents=True, exist_ok=True)
        for name in POLICY_FILES:
            shutil.copy2(built / name, where / name)
        print(f"  base policy {boot.cache_key()} pinned in {where} (commit it)", flush=True)
        print(f"  {band_line(json.loads((where / 'bootstrap.json').read_text()))}", flush=True)
    return where


def band_line(record: dict) -> str:
    """One line on a built policy's `bootstrap.json`: its held-out step accuracy against the
    per-step bands, and a warning when the build stopped outside them (by its time or step
    cap): the runs on it then start from a policy weaker or stronger than the bands ask."""
    cfg, acc = record["config"], record.get("step_accuracy")
    if acc is None:  # the arithmetic task: one pass@1 band
        return f"pass@1 {record['pass_at_1']:.3f}, in band: {record['in_band']}"
    line = (
        f"easy steps right {acc['easy_right']}/{acc['easy_total']} = {acc['easy_rate']:.3f} "
        f"(band >= {cfg['easy_step_min']:.2f}), pivot {acc['pivot_right']}/{acc['pivot_total']}"
        f" = {acc['pivot_rate']:.3f} (band {cfg['pivot_band_low']:.2f}-"
        f"{cfg['pivot_band_high']:.2f}), {record['train_steps']} SFT steps in "
        f"{record['seconds']:.0f} s"
    )
    if record["in_band"]:
        return line
    return f"WARNING: outside its bands, stopped by its cap: {line}"


def policy_sha(path: Path) -> str:
    """The first 16 hex digits of the sha256 of a policy's weights."""
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()[:16]


OTHERS_MAX = 0.05
"""Share of the machine's CPU time other processes may use during a run before its summary
is flagged: equal-time comparisons assume each run had the machine to itself."""


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (a run's launcher and, through it,
    every worker it reaped)."""
    t = os.times()
    return t.children_user + t.children_system


def machine_busy() -> float | None:
    """CPU seconds the whole machine has been busy since boot (/proc/stat); None elsewhere."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_use(
    seconds: float, run_cpu: float, busy_after, busy_before, cores: int | None = None
) -> dict | None:
    """How the machine's CPU time went during a run: the run's own processes, and everything
    else (`others_share` of all cores x wall time: a clean run is near 0)."""
    if busy_after is None or busy_before is None:
        return None
    cores = cores or os.cpu_count() or 1
    others = max(0.0, busy_after - busy_before - run_cpu)
    return {
        "cores": cores,
        "run_cpu_seconds": round(run_cpu, 1),
        "others_cpu_seconds": round(others, 1),
        "others_share": round(others / (seconds * cores), 3),
    }


def summary_path(config: Path, arm: str, seed: int) -> Path:
    """Where a run's summary is kept: one folder per config."""
    return SUMMARIES / config.stem / f"{run_id(arm, seed)}.json"


def describe_change(before: dict | None, after: dict) -> str:
    """The top-level settings in which `before` differs from `after`, as `key: a -> b`."""
    before = before or {}
    keys = [k for k in after if before.get(k) != after[k]] or ["settings"]
    return ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys)


def load_summary(config: Path, arm: str, seed: int, settings: dict | None = None) -> Curve | None:
    """The committed curve of a finished run; None when there is none, or (with `settings`)
    when it was made with other settings."""
    path = summary_path(config, arm, seed)
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    if settings is not None and d.get("settings") != settings:
        return None
    return Curve.from_json(d["curve"])


def launch_one(
    out: Path, config: Path, arm: str, seed: int, minutes: float, eval_every: int
) -> None:
    """One `gpo launch` of `arm` with `seed`; its console goes to <run>/launch.log and its
    summary to `SUMMARIES`."""
    # a pinned config's policy first: a run's settings name the weights it runs on, and the
    # first run of a cell runs on weights built here
    policy = pinned_policy(config, run_sets(arm, seed, eval_every), build=True)
    settings = run_settings(arm, seed, minutes, eval_every, config)
    if load_summary(config, arm, seed, settings) is not None:
        print(f"  {run_id(arm, seed)}: done before, kept", flush=True)
        return
    path = summary_path(config, arm, seed)
    if path.is_file():  # another study's run, or one of older settings: never overwritten
        before = json.loads(path.read_text()).get("settings")
        raise SystemExit(
            f"gpo experiment ablation: {path} holds a run of {run_id(arm, seed)} with other "
            f"settings ({describe_change(before, settings)}); move it aside to run it again"
        )
    run = out / config.stem / run_id(arm, seed)
    if run.exists():  # an interrupted run: start it again from nothing
        subprocess.run(["rm", "-rf", str(run)], check=True)
    run.mkdir(parents=True)
    sets = {"launch.runs_dir": json.dumps(str(run.parent)), "launch.report": "false"}
    sets |= settings["sets"]
    if policy is not None:
        sets["run.model"] = json.dumps(str(policy))
    cmd = [
        sys.executable,
        "-m",
        "ops.launch",
        "--config",
        str(config),
        "--run-id",
        run_id(arm, seed),
    ]
    cmd += ["--max-minutes", str(minutes)]
    cmd += [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    start, cpu_before, busy_before = time.monotonic(), children_cpu(), machine_busy()
    with (run / "launch.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    curve = read_curve(run)
    took = time.monotonic() - start
    cpu = cpu_use(took, children_cpu() - cpu_before, machine_busy(), busy_before)
    if rc != 0 or curve is None:
        raise SystemExit(
            f"gpo experiment ablation: run {run} failed (exit {rc}); see {run}/launch.log"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {"arm": arm, "seed": seed, "settings": settings, "seconds": round(took, 1)}
    summary["cpu"] = cpu
    summary["curve"] = curve.to_json()
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"  {run_id(arm, seed)}: {curve.updates} updates, pass@1 {curve.pass_at_1[0]:.3f} -> "
        f"{curve.pass_at_1[-1]:.3f} ({took:.0f} s)",
        flush=True,
    )
    if cpu and cpu["others_share"] > OTHERS_MAX:
        print(
            f"  warning: other processes used {cpu['others_share']:.0%} of the machine during "
            f"{run_id(arm, seed)}; its equal-time comparisons are not clean (rerun it alone: "
            f"move {path} aside)",
            flush=True,
        )


# ------------------------------------------------------------------ command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__.split("\n\n")
    p = parser("gpo experiment ablation", "\n\n".join(doc[:3]))
    p.add_argument("--study", choices=[*STUDIES, "all"], default="all", help="all: the demo's")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--minutes", type=float, default=3.0, help="training minutes per run")
    p.add_argument(
        "--eval-every", type=int, default=10, help="updates between evaluations, every arm"
    )
    p.add_argument("--config", help="run config (default: the study's, under ops/configs/)")
    p.add_argument("--out", default="runs/ablation", help="directory of the runs")
    p.add_argument("--report-only", action="store_true", help="rebuild tables from the runs")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.eval_every < 1 or not args.seeds:
        p.error("--minutes must be > 0, --eval-every >= 1, and at least one seed given")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.study == "all":  # the studies of the demo's configuration
        studies = [n for n, st in STUDIES.items() if st.config == "demo.toml" and not st.cells]
    else:
        studies = [args.study]
    out = Path(args.out).resolve()
    for name in studies:
        study = STUDIES[name]
        config = Path(args.config or ROOT / "ops" / "configs" / study.config).resolve()
        arms = study.run_arms()
        data = load_toml(config)
        for arm in arms:  # every run's config and sets, before the first run starts
            _, worker_sets = split_sets([f"{k}={v}" for k, v in run_sets(arm, 0, 1).items()])
            validate_roles(data, worker_sets, "")  # it works on a copy
        if not args.report_only:
            total = len(arms) * len(args.seeds)
            print(
                f"ablation {name}: {total} runs ({', '.join(arms)} x seeds {args.seeds}) of "
                f"{config.name}, {args.minutes:g} training minutes each (about "
                f"{total * (args.minutes + 0.3):.0f} minutes); runs in {out / config.stem}",
                flush=True,
            )
            for seed in args.seeds:
                for arm in arms:
                    launch_one(out, config, arm, seed, args.minutes, args.eval_every)
        curves = {
            (a, s): c
            for a in arms
            for s in args.seeds
            if (
                c := load_summary(
                    config, a, s, run_settings(a, s, args.minutes, args.eval_every, config)
                )
            )
            is not None
        }
        if not curves:
            print(f"gpo experiment ablation: no finished runs of {name}", file=sys.stderr)
            return 2
        body = study_report(name, study, curves, args.seeds, args.minutes)
        print(f"\n## {name}\n\n{body}\n")
        if args.write_results:
            command = (
                f"`gpo experiment ablation --study {name} --seeds {' '.join(map(str, args.seeds))} "
                f"--minutes {args.minutes:g}`"
            )
            path = write_section(f"ablation-{name}", f"Command: {command}\n\n{body}")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
