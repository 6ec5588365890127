"""A short real pipeline (gpo-learner + gpo-actor + gpo-estimator) on the tiny model.

Used by the tests that run the whole system against a Redis variant (hostile input, ACL
users over TLS, Redis Cluster): one TOML for all three processes, sized so that a learner
update needs only a few prompts on 2 loaded cores, and a ledger that reads the streams back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from protocol.codec import ProtocolError, decode
from protocol.consumer import FIELD
from protocol.streams import PROMPTS, RESETS, SAMPLES, TRAJECTORIES, WORK_STREAMS, Keys
from tests.support.procs import GpoProcess

RUN = "t"
KEYS = Keys(RUN)
N, N_RESET = 2, 1  # rollouts per prompt, per reset request
GROUPS = {PROMPTS: "actors", RESETS: "actors", TRAJECTORIES: "estimators", SAMPLES: "learner"}


def write_config(tmp_path: Path, model_dir: str, redis_extra: str = "") -> Path:
    """One TOML for all three roles; `redis_extra` adds lines to `[redis]`."""
    path = tmp_path / "pipeline.toml"
    engine = f'[{{p}}.engine]\nmodel = "{model_dir}"\n[{{p}}.rollout]\nn = {N}\nmax_new_tokens = 8\nseed = 3\n'
    path.write_text(
        f"""
[run]
id = "{RUN}"

[redis]
block_ms = 300
socket_timeout = 3.0
claim_idle = 30.0
pending_check_interval = 1.0
{redis_extra}

[learner]
model = "{model_dir}"
lora_rank = 4
lora_alpha = 8.0
lr = 1e-3
batch_size = 4
token_budget = 256
max_policy_lag = 100
checkpoint_dir = "{tmp_path / "ckpt"}"
checkpoint_every = 1
eval_every = 0
feeder_backlog_target = 2
feeder_backlog_bound = 4
task = "arithmetic"
log_sample_ids = true

[actor]
task = "arithmetic"
batch_messages = 4
max_policy_lag = 100
{engine.replace("{p}", "actor")}
[estimator]
task = "arithmetic"
n_reset = {N_RESET}
{engine.replace("{p}", "estimator")}
[estimator.mc]
k = 1
selection = "random"
"""
    )
    return path


def start(
    config: Path, urls: dict[str, str] | str, *extra: str, ports: dict[str, int] | None = None
) -> dict[str, GpoProcess]:
    """Start learner, actor and estimator (each with its own URL when `urls` is a dict) and
    wait until each one is serving."""
    modules = {
        "learner": "learner.main",
        "actor": "actors.actor",
        "estimator": "actors.estimator",
    }
    procs = {}
    for role, module in modules.items():
        url = urls[role] if isinstance(urls, dict) else urls
        args = ["--config", str(config), "--redis-url", url, "--name", f"{role}-0", *extra]
        args += ["--metrics-host", "127.0.0.1"]
        if ports and role in ports:
            args += ["--metrics-port", str(ports[role])]
        procs[role] = GpoProcess(module, *args, env={"OMP_NUM_THREADS": "1"})
    procs["actor"].wait_for("serving task", 180)
    procs["estimator"].wait_for("estimating for task", 180)
    return procs


def updates(config: Path) -> list[dict]:
    """The learner's `update` records so far (run log next to its checkpoints)."""
    log = config.parent / "ckpt" / "run_log.jsonl"
    if not log.exists():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in records if r["event"] == "update"]


def wait_until(pred: Callable[[], bool], timeout: float, what: str, procs=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if procs and any(p.proc.poll() is not None for p in procs.values()):
            break
        time.sleep(0.5)
    tails = ""
    for role, p in (procs or {}).items():
        tails += f"\n--- {role} (rc {p.proc.poll()}):\n" + "\n".join(p.lines[-25:])
    raise AssertionError(f"timed out waiting for {what}{tails}")


def stop_all(procs: dict[str, GpoProcess]) -> dict[str, int]:
    """SIGTERM every process (each finishes its work in hand), then collect exit codes."""
    for p in procs.values():
        if p.proc.poll() is None:
            p.proc.send_signal(15)
    codes = {}
    for role, p in procs.items():
        try:
            codes[role] = p.proc.wait(60)
        except Exception:
            p.kill()
            codes[role] = -9
    return codes


def acked_lost(r) -> dict[str, list[str]]:
    """For each work stream, the ids of good entries that were acked (not pending, not
    dead-lettered) yet whose output is missing downstream: that is what "nothing already
    acknowledged is lost" forbids. Samples must appear in the learner's trained ids."""
    dead = {s: {f[b"source_id"].decode() for _, f in r.xrange(KEYS.dead(s))} for s in WORK_STREAMS}
    out_ids = {TRAJECTORIES: _ids(r, TRAJECTORIES), SAMPLES: _ids(r, SAMPLES)}
    lost: dict[str, list[str]] = {}
    for stream in (PROMPTS, RESETS, TRAJECTORIES):
        for _eid, fields in acked_entries(r, stream, dead[stream]):
            msg = decode(fields[FIELD])
            if stream == TRAJECTORIES:
                wanted = [msg.id]
                produced = out_ids[SAMPLES]
            else:
                n = N if stream == PROMPTS else msg.n
                wanted = [f"{msg.id}/{j}" for j in range(n)]
                produced = out_ids[TRAJECTORIES]
            missing = [w for w in wanted if w not in produced]
            if missing:
                lost.setdefault(stream, []).extend(missing)
    return lost


def acked_samples_untrained(r, config: Path) -> set[str]:
    """Acked good samples the learner never trained (none may exist: no sample is stale in
    these runs, max_policy_lag is large)."""
    trained = {i for u in updates(config) for i in u["sample_ids"]}
    dead = {f[b"source_id"].decode() for _, f in r.xrange(KEYS.dead(SAMPLES))}
    ids = {decode(fields[FIELD]).id for _, fields in acked_entries(r, SAMPLES, dead)}
    return ids - trained


def acked_entries(r, stream: str, dead: set[str]) -> list[tuple[str, dict]]:
    """Entries of `stream` its group delivered and acked, minus the dead-lettered ones."""
    key, group = KEYS.stream(stream), GROUPS[stream]
    info = {g["name"].decode(): g for g in r.xinfo_groups(key)}
    last = _id(info[group]["last-delivered-id"].decode())
    pending = {p["message_id"].decode() for p in r.xpending_range(key, group, "-", "+", 10_000)}
    return [
        (eid.decode(), fields)
        for eid, fields in r.xrange(key)
        if _id(eid.decode()) <= last and eid.decode() not in pending | dead
    ]


def _ids(r, stream: str) -> set[str]:
    """Message ids of the decodable entries of `stream` (injected poison is skipped)."""
    out = set()
    for _, fields in r.xrange(KEYS.stream(stream)):
        try:
            out.add(decode(fields[FIELD]).id)
        except ProtocolError:
            continue
    return out


def _id(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)
