"""What `gpo launch` shows while a run goes: each process's metrics scraped from its
/metrics page, the work streams' backlogs from Redis, the one-line progress record, and when
the run is done (`launch.max_updates`, `launch.max_minutes`)."""

from __future__ import annotations

import urllib.request
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from protocol.streams import WORK_STREAMS, Keys

if TYPE_CHECKING:
    from ops.launch import LaunchConfig


def backlogs(redis_url: str, run_id: str) -> dict[str, int]:
    """Produced minus acked per work stream; {} while Redis cannot be reached."""
    import redis

    keys = Keys(run_id)
    try:
        r = redis.Redis.from_url(redis_url, socket_timeout=2, protocol=2)
        out = {}
        for s in WORK_STREAMS:
            produced, acked = r.mget(keys.produced(s), keys.acked(s))
            out[s] = int(produced or 0) - int(acked or 0)
        r.close()
        return out
    except (redis.RedisError, OSError):
        return {}


def progress_line(rec: dict, cfg: LaunchConfig) -> str:
    """One progress record as the line `gpo launch` prints."""
    procs = rec["processes"]
    learner = procs.get("learner") or {}
    updates = int(learner.get("gpo_learner_updates_total", 0))
    # a gauge reads 0 before its first value: none is shown until there is one
    reward = learner.get("gpo_learner_reward_mean") if updates else None
    evaluated = learner.get("gpo_learner_heldout_evaluations_total", 0) > 0
    heldout = learner.get("gpo_learner_heldout_pass_at_1_ratio") if evaluated else None
    versions = " ".join(
        f"{name}:v{_version(name, p)}" for name, p in procs.items() if name != "learner"
    )
    backlog = " ".join(f"{s[:4]}={v}" for s, v in rec["backlog"].items())
    elapsed = rec["t"] / 60
    left = ""
    if cfg.max_updates and updates:
        per = rec["t"] / updates
        left = f" | ~{(cfg.max_updates - updates) * per / 60:.1f} min left"
    elif cfg.max_minutes:
        left = f" | {cfg.max_minutes - elapsed:.1f} min left"
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    return (
        f"[{elapsed:5.1f} min] updates {updates} | reward {fmt(reward)} | held-out pass@1 {fmt(heldout)}"
        f" | policy {versions} | backlog {backlog}{left}"
    )


def done(rec: dict, cfg: LaunchConfig) -> str | None:
    """Why the run is over (its update or minute limit reached), or None."""
    learner = rec["processes"].get("learner") or {}
    if cfg.max_updates and learner.get("gpo_learner_updates_total", 0) >= cfg.max_updates:
        return f"reached {cfg.max_updates} updates"
    if cfg.max_minutes and rec["t"] >= cfg.max_minutes * 60:
        return f"reached {cfg.max_minutes:g} minutes"
    return None


def scrape(port: int) -> dict[str, float]:
    """One process's metrics as {name: value}: samples summed over labels; histograms as
    `<name>_sum`/`_count` and `<name>_bucket:<le>` entries."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            key = s.name
            if s.name.endswith("_bucket"):
                key = f"{s.name}:{s.labels.get('le')}"
            elif s.name.endswith("_info"):
                key = f"{s.name}:" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[key] = out.get(key, 0.0) + s.value
    return out


def _version(name: str, metrics: dict | None) -> str:
    role = name.split("-")[0]
    value = (metrics or {}).get(f"gpo_{role}_policy_version")
    return "?" if value is None else str(int(value))
