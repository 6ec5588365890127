"""gpo inspect: the critical-step inspector, an HTML page of sampled trajectories.

    gpo inspect RUN_DIR [--redis-url URL --run-id ID] [--limit N] [--seed S] [--model DIR]
                        [--out FILE]

For a sample of fresh trajectories it shows the prompt, every reasoning step's text with the
value of the state before it, V(s_i), and its advantage A_i = V(s_{i+1}) - V(s_i), the
critical step highlighted (CSS class `critical`), a small plot of the values, and below it
the reset rollouts that were regenerated from that step (kind `reset`, `parent_id` equal to
the trajectory id) with their rewards. About three quarters of the sample are trajectories
that got a reset request; the rest did not (no critical step: every A_i was 0, or the run
does not reset), and show their values from the `samples` stream when the estimator
forwarded them.

Data: the run's streams (`trajectories`, `resets`, `samples`). With `--redis-url` they are
read from that live Redis; otherwise a temporary redis-server is started on a copy of the
run's AOF directory (`RUN_DIR/redis`), so the run's own data is never touched. Token ids are
decoded with the run's base model tokenizer (`launch.json` `model`, else the config).
Output: one self-contained HTML file (inline CSS and SVG, every text escaped), by default
`RUN_DIR/inspect.html`. Only read commands (XRANGE) are sent to Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis

from ops.inspect_render import render
from ops.redis_server import RedisServer
from protocol.codec import ProtocolError, decode
from protocol.config import ConfigError, from_mapping, load_toml
from protocol.messages import ResetRequest, Sample, Trajectory
from protocol.streams import RESETS, SAMPLES, TRAJECTORIES, Keys, redact

WITH_RESET_SHARE = 0.75
"""Share of the sample drawn from trajectories that got a reset request."""


class InspectError(RuntimeError):
    """A problem the user can fix (no data, no tokenizer); printed without a traceback."""


@dataclass
class Row:
    """One sampled fresh trajectory and what followed it."""

    trajectory: Trajectory
    reset: ResetRequest | None
    values: np.ndarray | None
    """V(s_0)..V(s_T) from the reset request or the sample; None when not estimated yet."""
    children: list[Trajectory] = field(default_factory=list)
    """Reset rollouts regenerated from this trajectory's reset step, in stream order."""


@dataclass
class RunView:
    """What the page shows: the sample and counts over the whole run."""

    run_id: str
    source: str
    rows: list[Row]
    fresh: int = 0
    with_reset: int = 0
    reset_rollouts: int = 0
    undecodable: int = 0


# ---------------------------------------------------------------- reading


def entries(r: redis.Redis, key: str, chunk: int = 500) -> Iterator[tuple[bytes, bytes]]:
    """(entry id, message bytes) of a whole stream, oldest first, `chunk` entries a call."""
    start: bytes | str = "-"
    while True:
        batch = r.xrange(key, min=start, max="+", count=chunk)
        for entry_id, fields in batch:
            yield entry_id, fields.get(b"m", b"")
        if len(batch) < chunk:
            return
        start = b"(" + batch[-1][0]


def load(r: redis.Redis, run_id: str, source: str, limit: int, seed: int) -> RunView:
    """Read the run's streams and pick `limit` fresh trajectories (seeded sample)."""
    keys, view = Keys(run_id), RunView(run_id, source, [])

    def messages(stream: str, cls: type) -> Iterator[tuple[bytes, object]]:
        for entry_id, raw in entries(r, keys.stream(stream)):
            try:
                msg = decode(raw)
            except ProtocolError:  # a bad message was dead-lettered by its consumer too
                view.undecodable += 1
                continue
            if isinstance(msg, cls):
                yield entry_id, msg

    # 1. Reset requests, by trajectory id (one per trajectory: their ids are deterministic).
    resets = {m.trajectory_id: m for _, m in messages(RESETS, ResetRequest)}
    # 2. An index of the trajectories stream; the messages themselves are fetched after sampling.
    fresh: list[tuple[bytes, str]] = []
    children: dict[str, list[bytes]] = {}
    for entry_id, t in messages(TRAJECTORIES, Trajectory):
        if t.kind == "fresh":
            fresh.append((entry_id, t.id))
        elif t.parent_id is not None:
            children.setdefault(t.parent_id, []).append(entry_id)
    view.fresh, view.reset_rollouts = len(fresh), sum(map(len, children.values()))
    view.with_reset = sum(1 for _, tid in fresh if tid in resets)
    # 3. The sample: mostly trajectories with a reset request, the rest without.
    chosen = choose(fresh, resets.keys(), limit, random.Random(seed))

    def fetch(entry_id: bytes) -> Trajectory:
        (_, fields), *_ = r.xrange(keys.stream(TRAJECTORIES), min=entry_id, max=entry_id)
        return decode(fields[b"m"])

    for entry_id, tid in chosen:
        req = resets.get(tid)
        row = Row(fetch(entry_id), req, None if req is None else np.asarray(req.step_values))
        row.children = [fetch(e) for e in children.get(tid, [])]
        view.rows.append(row)
    # 4. Values of sampled trajectories without a reset request, from their training samples.
    missing = {row.trajectory.id: row for row in view.rows if row.values is None}
    if missing:
        for _, s in messages(SAMPLES, Sample):
            if s.id in missing and len(s.step_values):
                missing[s.id].values = np.asarray(s.step_values)
    return view


def choose(
    fresh: list[tuple[bytes, str]], reset_ids, limit: int, rng: random.Random
) -> list[tuple[bytes, str]]:
    """`limit` of `fresh`: WITH_RESET_SHARE of them with a reset request when there are
    enough, the rest without; either group fills in for the other when short. Those with a
    reset come first, each group in stream order."""
    reset_ids = set(reset_ids)
    with_r = [f for f in fresh if f[1] in reset_ids]
    without = [f for f in fresh if f[1] not in reset_ids]
    n_with = min(len(with_r), max(limit - len(without), math.ceil(limit * WITH_RESET_SHARE)))
    n_without = min(len(without), limit - n_with)
    order = {f: i for i, f in enumerate(fresh)}
    pick = lambda group, n: sorted(rng.sample(group, n), key=order.get)  # noqa: E731
    return pick(with_r, n_with) + pick(without, n_without)


@contextlib.contextmanager
def open_redis(run_dir: Path, url: str | None) -> Iterator[tuple[redis.Redis, str]]:
    """A client on the live Redis at `url`, else on a temporary redis-server that loads a
    copy of `run_dir/redis` (the run's AOF stays untouched); yields (client, description)."""
    if url:
        client = redis.Redis.from_url(url, protocol=2, socket_timeout=30)
        try:
            yield client, redact(url)
        finally:
            client.close()
        return
    data = run_dir / "redis"
    if not (data / "appendonlydir").is_dir() and not list(data.glob("*.rdb")):
        raise InspectError(f"no Redis data in {data}; give the live Redis with --redis-url")
    with tempfile.TemporaryDirectory(prefix="gpo-inspect-") as tmp:
        copy = Path(tmp) / "redis"
        shutil.copytree(data, copy, ignore=shutil.ignore_patterns("redis.log"))
        server = RedisServer(copy, aof=True).start(timeout=120)
        try:
            client = server.client(socket_timeout=30)
            yield client, f"a copy of {data}"
            client.close()
        finally:
            server.stop()


def find_model(run_dir: Path, launch: dict, override: str | None) -> str:
    """The base model directory whose tokenizer decodes the run's token ids."""
    model = override or launch.get("model") or ""
    cfg: dict = {}
    if not model and launch.get("config"):
        try:
            cfg = load_toml(launch["config"])
        except (ConfigError, OSError) as e:
            raise InspectError(f"cannot read the run config: {e}") from None
        model = (
            cfg.get("run", {}).get("model")
            or cfg.get("actor", {}).get("engine", {}).get("model")
            or cfg.get("learner", {}).get("model")
            or ""
        )
    if model == "bootstrap":  # the cached tiny policy of the run's task; never trained here
        from ops.run_setup import bootstrap_fields
        from ops.tiny_policy.bootstrap import BootstrapConfig

        try:
            fields = bootstrap_fields(
                cfg.get("run", {}), cfg.get("launch", {}).get("bootstrap", {})
            )
            boot = from_mapping(BootstrapConfig, fields, "launch.bootstrap")
        except ConfigError as e:
            raise InspectError(f"the run config's base policy: {e}") from None
        model = str(Path(boot.cache_dir).expanduser() / boot.cache_key())
    elif model == "smollm2":  # the imported model, cached by the packaged file's hash
        from ops.models import resolve_model

        model = resolve_model(model)
    if not model or not Path(model).is_dir():
        raise InspectError(
            f"base model {model or '(none)'} of {run_dir} not found; pass --model DIR"
        )
    return model


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gpo inspect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="the run directory, runs/<id>")
    p.add_argument("--redis-url", help="read a live Redis instead of a copy of RUN_DIR/redis")
    p.add_argument("--run-id", help="run id (default: launch.json run_id, else the dir name)")
    p.add_argument("--limit", type=int, default=12, help="trajectories to show (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    p.add_argument("--model", help="base model dir for the tokenizer (default: the run's)")
    p.add_argument("--out", help="output file (default RUN_DIR/inspect.html)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    launch_file = run_dir / "launch.json"
    launch = json.loads(launch_file.read_text()) if launch_file.is_file() else {}
    run_id = args.run_id or launch.get("run_id") or run_dir.resolve().name
    out = Path(args.out) if args.out else run_dir / "inspect.html"
    try:
        model = find_model(run_dir, launch, args.model)
        with open_redis(run_dir, args.redis_url) as (client, source):
            view = load(client, run_id, source, max(args.limit, 0), args.seed)
    except (InspectError, redis.RedisError) as e:
        print(f"gpo inspect: error: {e}", file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    page = render(view, AutoTokenizer.from_pretrained(model))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(
        f"inspect: {len(view.rows)} of {view.fresh} fresh trajectories"
        f" ({view.with_reset} with a reset request) -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
