"""What `gpo launch` settles before it starts anything: the `--set` flags split between the
launcher and the workers, the base model (`bootstrap` resolved to the tiny policy's
directory), and what to do with the state an earlier run of the same id left (resume it,
move it aside, or refuse).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from protocol.config import (
    ConfigError,
    MetricsConfig,
    RedisConfig,
    from_mapping,
    parse_set_value,
)
from protocol.run import with_run_facts


def prior_state(run_dir: Path) -> str | None:
    """What an earlier run left in `run_dir` that a new one would continue from, in words;
    None when there is nothing."""
    latest = run_dir / "learner" / "latest"
    if latest.is_file():
        try:
            meta = json.loads(
                (run_dir / "learner" / latest.read_text().strip() / "state.json").read_text()
            )
            return f"a checkpoint at step {meta['step']}, adapter version {meta['version']}"
        except (OSError, ValueError, KeyError):
            return "a checkpoint"
    redis = run_dir / "redis"
    if redis.is_dir() and any(redis.iterdir()):
        return "a Redis AOF (its streams and counters)"
    return None


def prepare_run_dir(run_dir: Path, resume: bool, fresh: bool) -> str:
    """Decide what a launch does with the state an earlier run of the same id left, and say
    it: resume it (`resume`), move it aside and start over (`fresh`), or refuse (ConfigError
    naming both)."""
    name, state = run_dir.name, prior_state(run_dir)
    if state is None:
        if resume:
            raise ConfigError(f"--resume: run {name} has no earlier state in {run_dir}")
        return f"run {name}: a new run in {run_dir}"
    if resume:
        return f"run {name}: resuming from {state} ({run_dir})"
    if fresh:
        archive = run_dir.with_name(f"{name}.{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(archive)
        return f"run {name}: the earlier run ({state}) moved to {archive}; starting over"
    raise ConfigError(
        f"run {name} already has {state} in {run_dir}: pass --resume to continue it, or "
        "--fresh to move it aside and start over"
    )


def split_sets(items: list[str]) -> tuple[dict, list[str]]:
    """`--set SECTION.KEY=VALUE` flags: the `launch.*` ones as {key: value} for the launcher,
    the others unchanged for every worker."""
    launch, workers = {}, []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        if key.startswith("launch."):
            launch[key.removeprefix("launch.")] = parse_set_value(raw)
        else:
            workers.append(item)
    return launch, workers


SECTIONS = ("run", "launch", "redis", "metrics", "learner", "actor", "estimator")
"""The top-level tables of a run config."""


def validate_roles(data: dict, sets: list[str], model: str) -> None:
    """Every section the launcher's workers read, built as each process builds it (the
    config with its `[run]` facts written into the sections, the workers' `--set` flags, the
    model the launcher passes), before anything starts: an unknown section or key, a wrong
    type, a value out of range or a section contradicting `[run]` is one ConfigError naming
    it. Across roles: an actor may not lag more versions than the learner accepts
    (`actor.max_policy_lag` <= `learner.max_policy_lag`), or it generates samples the
    learner drops as stale; the samples backlog must hold what the learner keeps unacked."""
    from actors.actor import ActorConfig
    from actors.estimator import EstimatorConfig
    from learner.config import LearnerConfig, check_samples_room

    placeholders = ['learner.checkpoint_dir="checkpoints"']
    if model:
        placeholders.append(f"run.model={json.dumps(model)}")
    data = with_run_facts(data, [*sets, *placeholders])
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    redis_cfg = from_mapping(
        RedisConfig, {"url": "redis://127.0.0.1:6379/0", **data.get("redis", {})}, "redis"
    )
    from_mapping(MetricsConfig, data.get("metrics", {}), "metrics")
    learner = from_mapping(LearnerConfig, data.get("learner", {}), "learner")
    check_samples_room(learner, redis_cfg)
    actor = from_mapping(ActorConfig, data.get("actor", {}), "actor")
    from_mapping(EstimatorConfig, data.get("estimator", {}), "estimator")
    if actor.max_policy_lag > learner.max_policy_lag:
        raise ConfigError(
            f"actor.max_policy_lag ({actor.max_policy_lag}) exceeds learner.max_policy_lag "
            f"({learner.max_policy_lag}): the actor would generate samples the learner drops "
            "as stale"
        )


def base_model(data: dict, flag: str | None = None) -> str:
    """The run's base model: `gpo launch --model`, else `[run] model` ("" when neither)."""
    return flag or data.get("run", {}).get("model", "")


def launch_table(data: dict, overrides: dict | None = None, model: str = "") -> dict:
    """The `[launch]` table with the launcher's `--set launch.*` overrides and, when the base
    `model` is `bootstrap`, its `bootstrap` recipe completed with the run's task and task
    options (the base policy is trained on the task the run trains): the mapping
    `LaunchConfig` is built from."""
    launch = {**data.get("launch", {}), **(overrides or {})}
    if "model" in launch:
        raise ConfigError(
            "launch.model is now run.model: the base model is a run-wide fact, set once in [run]"
        )
    if model == "bootstrap":
        launch["bootstrap"] = bootstrap_fields(data.get("run", {}), launch.get("bootstrap", {}))
    return launch


def bootstrap_fields(run: dict, recipe: dict) -> dict:
    """`gpo bootstrap` fields for the run's base policy: `recipe` (`launch.bootstrap`), with
    the task and those task options the bootstrap knows taken from `[run]` when it states
    them; a recipe that contradicts `[run]` is a ConfigError."""
    from ops.tiny_policy.bootstrap import BootstrapConfig

    known = {f.name for f in dataclasses.fields(BootstrapConfig)}
    facts = {k: v for k, v in run.get("task_options", {}).items() if k in known}
    if "task" in run:
        facts["task"] = run["task"]
    out = dict(recipe)
    for key, value in facts.items():
        if key in out and out[key] != value:
            where = "task" if key == "task" else f"task_options.{key}"
            raise ConfigError(
                f"launch.bootstrap.{key} = {out[key]!r} contradicts run.{where} = {value!r}: "
                "the base policy is trained on the run's task (remove it from launch.bootstrap)"
            )
        out[key] = value
    return out


def set_flags(fields: dict[str, str]) -> list[str]:
    """`--set key="value"` flags (values as TOML strings)."""
    return [a for k, v in fields.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def check_redis(url: str) -> None:
    """A Redis the user named must answer before anything starts: ConfigError with the same
    line a worker would print (`cannot reach Redis at ...`, the password redacted)."""
    import asyncio

    from protocol.config import RedisConfig
    from protocol.streams import Link, RedisFatalError

    async def ping() -> None:
        link = Link(RedisConfig(url=url, run_id="check", socket_timeout=3.0, connect_timeout=3.0))
        try:
            await link.connect(attempts=2)
        finally:
            await link.close()

    try:
        asyncio.run(ping())
    except RedisFatalError as e:
        raise ConfigError(str(e)) from None


PACKAGES = ("torch", "transformers", "peft", "redis", "vllm", "gpo")
"""Whose versions a run records (`software`); the ones not installed are left out."""


def software() -> dict[str, str]:
    """Python, the packages a run rests on and the source commit, as the run's record has it
    (`launch.json`, shown in the report): what another person needs to reproduce it."""
    import platform
    import subprocess
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if commit:
        out["commit"] = commit
    return out
