"""A short real pipeline (gpo-learner + gpo-actor + gpo-estimator) on the tiny model.

Used by the tests that run the whole system against a Redis variant (hostile input, ACL
users over TLS, Redis Cluster) and under faults (test_system_faults): one TOML for all
three processes, sized so that a learner update needs only a few prompts on 2 loaded cores,
and the system's books from ops/ledger.py, read from the streams and the learner's run log
(`books`).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import redis

from ops.ledger import (
    Ledger,
    by_id,
    dump_stream,
    id_order,
    read_ledger,
    read_runlog,
    trained_history,
)
from ops.redis_server import free_port
from protocol.codec import CodecLimits, decode
from protocol.consumer import FIELD
from protocol.streams import GROUPS, PROMPTS, RESETS, TRAJECTORIES, WORK_STREAMS, Keys
from tests.support.procs import GpoProcess
from tests.support.waits import wait_until  # noqa: F401 - the tests call pipeline.wait_until

RUN = "t"
KEYS = Keys(RUN)
N, N_RESET = 2, 1  # rollouts per prompt, per reset request


def write_config(
    tmp_path: Path,
    model_dir: str,
    redis_extra: str = "",
    max_new_tokens: int = 8,
    task: str = "arithmetic",
) -> Path:
    """One TOML for all three roles; `redis_extra` adds lines to `[redis]`."""
    path = tmp_path / "pipeline.toml"
    engine = f'[{{p}}.engine]\nmodel = "{model_dir}"\n[{{p}}.rollout]\nn = {N}\nmax_new_tokens = {max_new_tokens}\nseed = 3\n'
    path.write_text(
        f"""
[run]
id = "{RUN}"

[redis]
block_ms = 300
socket_timeout = 3.0
# keep every entry: the checks read the streams afterwards
trim_interval = 0
claim_idle = 30.0
pending_check_interval = 1.0
{redis_extra}

[learner]
model = "{model_dir}"
batch_size = 4
token_budget = 256
max_policy_lag = 100
checkpoint_dir = "{tmp_path / "ckpt"}"
checkpoint_every = 1
task = "{task}"
log_sample_ids = true

[learner.lora]
rank = 4
alpha = 8.0

[learner.ppo]
lr = 1e-3

[learner.eval]
every = 0

[learner.feeder]
backlog_target = 2
backlog_bound = 4

[actor]
task = "{task}"
batch_messages = 4
max_policy_lag = 100
{engine.replace("{p}", "actor")}
[estimator]
task = "{task}"
n_reset = {N_RESET}
{engine.replace("{p}", "estimator")}
[estimator.mc]
k = 1
selection = "random"
"""
    )
    return path


MODULES = {"learner": "learner.main", "actor": "actors.actor", "estimator": "actors.estimator"}
READY = {"learner": "connected; run", "actor": "serving task", "estimator": "estimating for task"}


def launch(
    config: Path,
    url: str,
    role: str,
    name: str,
    *extra: str,
    port: int | None = None,
    env: dict | None = None,
    loop: str = "uvloop",
) -> GpoProcess:
    """Start one process of `role` as consumer `name` (no wait; see `ready`)."""
    args = ["--config", str(config), "--redis-url", url, "--name", name, *extra]
    args += ["--metrics-host", "127.0.0.1"]
    if port is not None:
        args += ["--metrics-port", str(port)]
    return GpoProcess(
        MODULES[role], *args, env={"OMP_NUM_THREADS": "1", **(env or {})}, port=port, loop=loop
    )


def ready(role: str, proc: GpoProcess, timeout: float = 180) -> GpoProcess:
    """Block until `proc` says it is serving (the learner: connected to Redis)."""
    proc.wait_for(READY[role], timeout)
    return proc


def start(
    config: Path, urls: dict[str, str] | str, *extra: str, ports: dict[str, int] | None = None
) -> dict[str, GpoProcess]:
    """Start learner, actor and estimator (each with its own URL when `urls` is a dict) and
    wait until each one is serving."""
    procs = {}
    for role in MODULES:
        url = urls[role] if isinstance(urls, dict) else urls
        port = ports.get(role) if ports else None
        procs[role] = launch(config, url, role, f"{role}-0", *extra, port=port)
    ready("actor", procs["actor"])
    ready("estimator", procs["estimator"])
    return procs


class System:
    """The gpo processes of one test by consumer name, each with its own metrics port.
    `start` launches them together (start-up is the slow part) and waits until all serve;
    `close` kills whatever is left, so a failing test leaves no process behind."""

    def __init__(self, config: Path, url: str, *extra: str, loop: str = "uvloop"):
        self.config, self.url, self.extra, self.loop = config, url, extra, loop
        self.procs: dict[str, GpoProcess] = {}
        """The processes expected to be running."""
        self.gone: list[GpoProcess] = []
        """Processes the test stopped or killed on purpose."""

    def __getitem__(self, name: str) -> GpoProcess:
        return self.procs[name]

    def start(self, *names: str, env: dict | None = None) -> None:
        """Start processes named `<role>-<i>` (`learner` for the learner), wait until ready."""
        started = {}
        for name in names:
            role = name.split("-")[0]
            started[name] = launch(
                self.config,
                self.url,
                role,
                name,
                *self.extra,
                port=free_port(),
                env=env,
                loop=self.loop,
            )
        self.procs.update(started)
        for name, proc in started.items():
            ready(name.split("-")[0], proc)

    def retire(self, name: str) -> GpoProcess:
        """Take `name` out of the running set (the test is about to stop or kill it)."""
        proc = self.procs.pop(name)
        self.gone.append(proc)
        return proc

    def alive(self) -> bool:
        return all(p.proc.poll() is None for p in self.procs.values())

    def stop_all(self, timeout: float = 60) -> dict[str, int]:
        """SIGTERM every running process at once, then collect every exit code."""
        for p in self.procs.values():
            p.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            p.signal(signal.SIGTERM)
        return {name: p.proc.wait(timeout) for name, p in self.procs.items()}

    def close(self) -> None:
        for p in [*self.procs.values(), *self.gone]:
            p.kill()

    def tails(self) -> str:
        return "".join(
            f"\n--- {name} (rc {p.proc.poll()}):\n" + "\n".join(p.lines[-25:])
            for name, p in self.procs.items()
        )


def settings(values: dict) -> list[str]:
    """`--set SECTION.KEY=VALUE` flags for every item (a dict VALUE as a TOML inline table,
    a bool as TOML's true/false)."""
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, dict):
            value = "{" + ", ".join(f"{k} = {v}" for k, v in value.items()) + "}"
        out += ["--set", f"{key}={value}"]
    return out


def holding(r, system: System, names: list[str], size: int | None, timeout: float = 60) -> str:
    """The first actor of `names` seen holding `size` (None: any number of) unacked prompts
    and resets, the same entries for a second: it is blocked, not between batches."""
    deadline = time.monotonic() + timeout
    since: dict[str, tuple[list, float]] = {}
    while time.monotonic() < deadline:
        for name in names:
            ids = pending(r, PROMPTS, name) + pending(r, RESETS, name)
            if not ids or (size is not None and len(ids) != size):
                since.pop(name, None)
            elif since.get(name, ([], 0.0))[0] != ids:
                since[name] = (ids, time.monotonic())
            elif time.monotonic() - since[name][1] >= 1.0:
                return name
        assert system.alive(), system.tails()
        time.sleep(0.05)
    raise AssertionError(f"none of {names} held {size} messages{system.tails()}")


def run_log(config: Path) -> list[dict]:
    """The learner's run log so far (next to its checkpoints), every event."""
    return read_runlog(learner_dir(config) / "run_log.jsonl")


def learner_dir(config: Path) -> Path:
    """The learner's checkpoint directory (`write_config`)."""
    return config.parent / "ckpt"


def updates(config: Path) -> list[dict]:
    """The learner's `update` records so far."""
    return [r for r in run_log(config) if r["event"] == "update"]


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


def books(r, config: Path) -> Ledger:
    """The system's books (ops/ledger.py) once every process stopped: what became of each
    id of every work stream, from the streams and the learner's run log and checkpoint."""
    return read_ledger(r, KEYS, learner_dir(config), N)[0]


def surplus(config: Path) -> set[str]:
    """Reset sample ids the learner dropped by design: its buffer was full of resets while
    the batch composition waited for fresh samples (`surplus` records of the run log)."""
    return {i for rec in run_log(config) if rec["event"] == "surplus" for i in rec["sample_ids"]}


def settled(config: Path) -> set[str]:
    """Sample ids the learner is done with so far: trained, or dropped as surplus."""
    return set(trained(config)) | surplus(config)


def trained(config: Path) -> Counter:
    """Sample ids of the updates the learner's weights contain so far, counted."""
    return trained_history(run_log(config))


def outputs(stream: str, message) -> list[str]:
    """Ids of the messages one work message becomes downstream: N trajectories per prompt,
    `n` per reset request (both `<id>/<j>`), and one sample per trajectory (same id)."""
    if stream == TRAJECTORIES:
        return [message.id]
    n = N if stream == PROMPTS else message.n
    return [f"{message.id}/{j}" for j in range(n)]


def descendants(held: dict[str, list]) -> list[str]:
    """`outputs` of every message of a `held` result."""
    return [o for stream, msgs in held.items() for m in msgs for o in outputs(stream, m)]


def pending(r, stream: str, consumer: str | None = None) -> list[str]:
    """Entry ids pending in `stream`'s group (for one consumer, if named)."""
    kw = {"consumername": consumer} if consumer else {}
    try:
        rows = r.xpending_range(KEYS.stream(stream), GROUPS[stream], "-", "+", 10_000, **kw)
    except redis.ResponseError:  # no group (yet, or Redis lost its data)
        return []
    return [row["message_id"].decode() for row in rows]


def held(r, consumer: str, streams=(PROMPTS, RESETS)) -> dict[str, list]:
    """The messages `consumer` holds unacknowledged, per stream (whatever its reset cap)."""
    limits = CodecLimits(max_reset_n=2**31)
    out = {}
    for stream in streams:
        ids = pending(r, stream, consumer)
        raws = [r.xrange(KEYS.stream(stream), i, i)[0][1][FIELD] for i in ids]
        out[stream] = [decode(raw, limits) for raw in raws]
    return out


def backlog(r, stream: str) -> int:
    """Produced minus acknowledged, from the counters the producers and consumers keep."""
    produced, acked = r.mget(KEYS.produced(stream), KEYS.acked(stream))
    return int(produced or 0) - int(acked or 0)


def snapshot(r) -> dict[str, dict]:
    """Per work stream: its group's last delivered id, the acked and the pending entry ids.
    Raises when a stream or its group is missing."""
    out = {}
    for stream in WORK_STREAMS:
        groups = {g["name"].decode() for g in r.xinfo_groups(KEYS.stream(stream))}
        if GROUPS[stream] not in groups:
            raise AssertionError(f"{stream}: no group {GROUPS[stream]}")
        dump = dump_stream(r, KEYS, stream)
        dead = {d["source_id"] for d in dump.dead}
        out[stream] = {
            "last": id_order(dump.last_delivered),
            "acked": {e for e, _ in dump.entries if not dump.in_flight(e) and e not in dead},
            "pending": dump.pending,
        }
    return out


def message_ids(r, stream: str) -> set[str]:
    """Message ids of the decodable entries of `stream` (injected poison is skipped)."""
    return set(message_ids_counted(r, stream))


def message_ids_counted(r, stream: str) -> Counter:
    """Message ids of the decodable entries of `stream`, with how many entries carry each."""
    return Counter(
        {i: len(entries) for i, entries in by_id(dump_stream(r, KEYS, stream), stream).items()}
    )


def messages(r, stream: str) -> dict[str, object]:
    """The decodable messages of `stream` by message id (the first entry of each)."""
    return {i: entries[0][1] for i, entries in by_id(dump_stream(r, KEYS, stream), stream).items()}
