"""What `gpo launch` settles before it starts anything: the `--set` flags split between the
launcher and the workers, the base model (`bootstrap` resolved to the tiny policy's
directory), and what to do with the state an earlier run of the same id left (resume it,
move it aside, or refuse).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from protocol.config import ConfigError, from_mapping, parse_set_value


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


def set_flags(fields: dict[str, str]) -> list[str]:
    """`--set key="value"` flags (values as TOML strings)."""
    return [a for k, v in fields.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def resolve_model(model: str, fields: dict | None = None) -> str:
    """`bootstrap` -> the directory of the tiny built-in policy that `fields` (BootstrapConfig
    fields; none: the arithmetic one) describe, built once, then cached."""
    if model != "bootstrap":
        return model
    from actors.bootstrap import BootstrapConfig, bootstrap

    print("tiny base policy: building or reusing the cached one (gpo bootstrap) ...", flush=True)
    path = bootstrap(from_mapping(BootstrapConfig, dict(fields or {}), "launch.bootstrap"))
    record = json.loads((path / "bootstrap.json").read_text())
    print(f"tiny base policy: {path} (held-out pass@1 {record.get('pass_at_1')})", flush=True)
    return str(path)
