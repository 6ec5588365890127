"""gpo-learner as a real process against a real redis-server, with a tiny random Llama.

Samples are encoded here and injected into the `samples` stream the way estimators write
them (XADD + produced counter). The learner's run log (with `log_sample_ids`) is the
training ledger: a `resume` record at step S voids the previous incarnation's updates past
S (they never reached a checkpoint), so what remains is exactly the history of the weights.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from protocol.codec import decode, encode
from protocol.consumer import FIELD
from protocol.streams import PROMPTS, SAMPLES, WEIGHTS, Keys
from tests.support.learner import make_sample, tiny_model
from tests.support.waits import poll
from tests.support.workload import ROOT

KEYS = Keys("t")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Learner:
    """A `python -m learner.main` process."""

    def __init__(self, url: str, config: Path, log: Path, fault: str | None = None):
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        env.pop("GPO_LEARNER_FAULT", None)
        if fault:
            env["GPO_LEARNER_FAULT"] = fault
        self.port = free_port()
        self.log = log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "learner.main", "--config", str(config), "--redis-url", url]
            + ["--run-id", "t", "--metrics-port", str(self.port), "--metrics-host", "127.0.0.1"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read()
        total = 0.0
        for line in text.decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def write_config(tmp: Path, model: str, eval_every: int = 2, **extra) -> Path:
    fields = {
        "model": model,
        "batch_size": 4,
        "token_budget": 64,
        "max_policy_lag": 1,
        "checkpoint_dir": str(tmp / "ckpt"),
        "checkpoint_every": 1,
        "task": "arithmetic",
        "log_sample_ids": True,
        "compose_patience": 0.5,
        **extra,
    }
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())
    body += "\n[learner.task_options]\nn_train = 40\nn_heldout = 8\n"
    body += "[learner.lora]\nrank = 4\nalpha = 8.0\n[learner.ppo]\nlr = 1e-3\n"
    body += f"[learner.eval]\nevery = {eval_every}\ncount = 4\nmax_new_tokens = 8\n"
    body += "[learner.feeder]\nbacklog_target = 8\nbacklog_bound = 16\n"
    redis = "[redis]\nblock_ms = 200\nsocket_timeout = 3.0\npending_check_interval = 0.5\nclaim_idle = 1.5\nmax_deliveries = 2\n"
    path = tmp / "learner.toml"
    path.write_text(redis + "[learner]\n" + body)
    return path


def inject(r, samples) -> None:
    for s in samples:
        r.xadd(KEYS.stream(SAMPLES), {FIELD: encode(s)})
        r.incrby(KEYS.produced(SAMPLES), 1)


def pointers(r) -> list:
    return [decode(f[FIELD]) for _, f in r.xrange(KEYS.stream(WEIGHTS))]


def newest_version(r) -> int:
    ps = pointers(r)
    return max((p.version for p in ps), default=0)


def trained_history(runlog: Path) -> Counter:
    """Sample ids of the updates that the final weights contain, counted."""
    updates: list[dict] = []
    for line in runlog.read_text().splitlines():
        rec = json.loads(line)
        if rec["event"] == "resume":
            updates = [u for u in updates if u["step"] <= rec["step"]]
        elif rec["event"] == "update":
            updates.append(rec)
    return Counter(i for u in updates for i in u["sample_ids"])


def pending(r) -> int:
    return int(r.xpending(KEYS.stream(SAMPLES), "learner")["pending"])


def test_learner_trains_publishes_dedups_drops_stale_and_resumes(redis_server, tmp_path, model_dir):
    r = redis_server.client()
    config = write_config(tmp_path, model_dir)
    runlog = tmp_path / "ckpt" / "run_log.jsonl"
    learner = Learner(redis_server.url, config, tmp_path / "learner.log")
    try:
        first = [
            make_sample(f"s{i}", seed=i, reward=float(i % 2), prompt_id=f"p{i // 2}")
            for i in range(8)
        ]
        inject(r, first[:4] + [first[0]] + first[4:])  # s0 twice
        assert poll(lambda: newest_version(r) >= 2, 60), (tmp_path / "learner.log").read_text()[
            -3000:
        ]
        # two updates done at version 2; max_policy_lag 1 makes version-0 samples stale
        stale = [make_sample(f"old{i}", seed=20 + i, version=0) for i in range(2)]
        fresh = [make_sample(f"n{i}", seed=30 + i, version=2, kind="reset") for i in range(4)]
        inject(r, stale + fresh)
        assert poll(lambda: newest_version(r) >= 3, 60)
        assert poll(lambda: learner.metric("gpo_learner_samples_dropped_stale_total") == 2, 10)
        assert learner.metric("gpo_learner_samples_dropped_duplicate_total") == 1
        assert learner.metric("gpo_learner_updates_total") == 3
        assert learner.metric("gpo_learner_adapter_version") == 3
        # the feeder filled the prompts backlog to its target and not past its bound
        assert r.xlen(KEYS.stream(PROMPTS)) == 8
        assert poll(lambda: pending(r) == 0, 10)  # everything trained or dropped is acked
        assert learner.stop() == 0
    finally:
        if learner.proc.poll() is None:
            learner.proc.kill()

    history = trained_history(runlog)
    assert history == Counter({f"s{i}": 1 for i in range(8)} | {f"n{i}": 1 for i in range(4)})
    events = [json.loads(line) for line in runlog.read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    # step 0 is the base policy (the "before" of every learning curve), then every 2 updates
    assert [e["step"] for e in evals] == [0, 2] and all(0.0 <= e["pass_at_1"] <= 1.0 for e in evals)
    v3 = next(p for p in pointers(r) if p.version == 3)
    assert v3.lora_config["r"] == 4 and v3.lora_config["lora_dropout"] == 0.0
    latest = (tmp_path / "ckpt" / "latest").read_text()
    assert latest == "step-000003"

    # Restart: resumes step 3 and republishes the same adapter as a new version 4.
    again = Learner(redis_server.url, config, tmp_path / "learner.log")
    try:
        assert poll(lambda: newest_version(r) == 4, 60)
        v4 = next(p for p in pointers(r) if p.version == 4)
        assert v4.sha256 == v3.sha256
        assert again.stop() == 0
    finally:
        if again.proc.poll() is None:
            again.proc.kill()
    resume = [json.loads(line) for line in runlog.read_text().splitlines()][-1]
    assert resume["event"] == "resume" and resume["step"] == 3


@pytest.mark.parametrize(
    "fault, every",
    [("after_step:2", 1), ("after_publish:2", 1), ("after_checkpoint:2", 1), ("after_step:3", 2)],
)
def test_18_kill9_between_step_and_ack_trains_every_sample_once(
    redis_server, tmp_path, model_dir, fault, every
):
    r = redis_server.client()
    config = write_config(
        tmp_path, model_dir, eval_every=0, max_policy_lag=8, checkpoint_every=every
    )
    runlog = tmp_path / "ckpt" / "run_log.jsonl"
    log = tmp_path / "learner.log"
    ids = [f"s{i}" for i in range(12)]
    inject(r, [make_sample(sid, seed=i, reward=float(i % 2)) for i, sid in enumerate(ids)])
    doomed = Learner(redis_server.url, config, log, fault=fault)
    assert doomed.proc.wait(90) == -signal.SIGKILL, log.read_text()[-3000:]
    assert pending(r) >= 4  # the killed update's samples were never acked
    learner = Learner(redis_server.url, config, log)
    try:
        assert poll(lambda: set(trained_history(runlog)) == set(ids), 90), log.read_text()[-3000:]
        if every > 1:  # trained, not yet committed: held past claim_idle, kept by the lease
            time.sleep(4)
            assert pending(r) == 4
        assert learner.metric("gpo_learner_messages_dead_lettered_total") == 0
        assert learner.stop() == 0
        assert pending(r) == 0  # everything is committed and acked by the SIGTERM checkpoint
    finally:
        if learner.proc.poll() is None:
            learner.proc.kill()
    history = trained_history(runlog)
    assert history == Counter(dict.fromkeys(ids, 1)), history
    state = json.loads((tmp_path / "ckpt" / "step-000003" / "state.json").read_text())
    assert sorted(state["trained_ids"]) == sorted(ids)


def updates_of(runlog: Path) -> list[dict]:
    return [
        rec
        for line in runlog.read_text().splitlines()
        if (rec := json.loads(line))["event"] == "update"
    ]


@pytest.mark.parametrize(
    "mode, size, read_ahead, want",
    [
        # 8 fresh + 8 resets twice; then only resets are left and fill two batches of 16
        ("share", 16, 256, [(8, 8, None), (8, 8, None), (0, 16, "fresh"), (0, 16, "fresh")]),
        # 8 fresh with 8 resets on top (half the batch) twice; then resets stand in
        ("fresh", 8, 256, [(8, 8, None), (8, 8, None), (0, 16, "fresh"), (0, 16, "fresh")]),
        # a bound of 24: the resets ahead of the fresh samples fill it, the surplus is dropped
        ("share", 16, 24, None),
    ],
)
def test_learner_trains_the_configured_composition(
    redis_server, tmp_path, model_dir, mode, size, read_ahead, want
):
    """16 fresh and 48 reset samples with a reset share of 0.5 (issue: batch composition)."""
    r = redis_server.client()
    config = write_config(
        tmp_path,
        model_dir,
        eval_every=0,
        max_policy_lag=32,
        batch_size=size,
        batch_mode=mode,
        reset_fraction=0.5,
        read_ahead=read_ahead,
    )
    fresh = [make_sample(f"f{i}", seed=i, prompt_id=f"p{i // 4}") for i in range(16)]
    resets = [
        make_sample(f"r{i}", seed=100 + i, kind="reset", group=f"reset:t{i // 4}")
        for i in range(48)
    ]
    if want is None:  # every reset first, then the fresh samples
        inject(r, resets + fresh)
    else:  # as GPO makes them: each fresh sample followed by three resets
        inject(r, [s for i in range(16) for s in (fresh[i], *resets[3 * i : 3 * i + 3])])
    runlog = tmp_path / "ckpt" / "run_log.jsonl"
    learner = Learner(redis_server.url, config, tmp_path / "learner.log")
    try:
        done = 4 if want else 2
        assert poll(lambda: runlog.exists() and len(updates_of(runlog)) >= done, 90), (
            tmp_path / "learner.log"
        ).read_text()[-3000:]
        if want is None:
            assert poll(lambda: pending(r) == 0, 20)
            surplus = learner.metric("gpo_learner_samples_dropped_surplus_total")
        else:
            short = learner.metric("gpo_learner_batches_short_total")
            share = learner.metric("gpo_learner_batch_reset_share_ratio")
        assert learner.stop() == 0
    finally:
        if learner.proc.poll() is None:
            learner.proc.kill()
    updates = updates_of(runlog)
    got = [(u["fresh"], u["resets"], u["shortfall"]) for u in updates]
    if want is not None:
        assert got == want
        assert [u["reset_share"] for u in updates] == [0.5, 0.5, 1.0, 1.0]
        assert short == 2 and share == 1.0
        trained = Counter(i for u in updates for i in u["sample_ids"])
        assert trained == Counter(s.id for s in fresh + resets)  # each exactly once
        # oldest first within each kind
        first = updates[0]["sample_ids"]
        assert [i for i in first if i.startswith("f")] == [s.id for s in fresh[:8]]
        assert [i for i in first if i.startswith("r")] == [s.id for s in resets[:8]]
        return
    # bound 24 holds 24 resets, then drops 16 of them (down to the 8 a batch takes) to make
    # room, and so on; the fresh samples all train, each batch exactly 8 + 8
    assert got == [(8, 8, None), (8, 8, None)]
    trained = [i for u in updates for i in u["sample_ids"]]
    assert sorted(i for i in trained if i.startswith("f")) == sorted(s.id for s in fresh)
    assert surplus == 48 - 16
    dropped = [
        i
        for line in runlog.read_text().splitlines()
        if (rec := json.loads(line))["event"] == "surplus"
        for i in rec["sample_ids"]
    ]
    assert sorted(dropped + [i for i in trained if i.startswith("r")]) == sorted(
        s.id for s in resets
    )


def test_a_sample_too_long_to_train_is_dead_lettered_alone(redis_server, tmp_path, model_dir):
    r = redis_server.client()
    config = write_config(tmp_path, model_dir, eval_every=0, max_sample_tokens=12)
    ok = [make_sample(f"s{i}", seed=i, prompt_id=f"p{i // 2}") for i in range(4)]  # 10 tokens
    long = make_sample("long", seed=9, prompt_len=4, completion_len=20)  # 24 tokens
    inject(r, ok[:2] + [long] + ok[2:])
    runlog = tmp_path / "ckpt" / "run_log.jsonl"
    learner = Learner(redis_server.url, config, tmp_path / "learner.log")
    try:
        assert poll(lambda: runlog.exists() and len(updates_of(runlog)) >= 1, 60), (
            tmp_path / "learner.log"
        ).read_text()[-3000:]
        assert learner.stop() == 0
    finally:
        if learner.proc.poll() is None:
            learner.proc.kill()
    dead = r.xrange(KEYS.dead(SAMPLES))
    assert len(dead) == 1 and dead[0][1][b"reason"].startswith(b"too_long: 24 tokens > 12")
    assert decode(dead[0][1][b"raw"]).id == "long"
    assert sorted(i for u in updates_of(runlog) for i in u["sample_ids"]) == [s.id for s in ok]


def test_a_sample_that_kills_the_learner_is_bisected_out_and_dead_lettered_alone(
    redis_server, tmp_path, model_dir
):
    """`s1` SIGKILLs the learner in every update that trains it (the fault hook). The
    supervisor's part is played here: restart after each death. With `max_deliveries = 2`
    the transport alone would dead-letter every held sample after the second death."""
    r = redis_server.client()
    config = write_config(tmp_path, model_dir, eval_every=0, max_policy_lag=8)
    runlog, log = tmp_path / "ckpt" / "run_log.jsonl", tmp_path / "learner.log"
    ids = [f"s{i}" for i in range(10)]  # the 9 innocent ones fill whole batches of 4
    inject(r, [make_sample(sid, seed=i, reward=float(i % 2)) for i, sid in enumerate(ids)])
    innocent = set(ids) - {"s1"}
    deaths, started = 0, []
    try:
        for _ in range(6):  # bounded: a batch of 4 takes at most deaths_to_isolate(4) = 3
            learner = Learner(redis_server.url, config, log, fault="train_sample:s1")
            started.append(learner)
            done = poll(
                lambda proc=learner.proc: (
                    proc.poll() is not None
                    or (runlog.exists() and set(trained_history(runlog)) >= innocent)
                ),
                90,
            )
            assert done, log.read_text()[-3000:]
            if learner.proc.poll() is None:
                break
            assert learner.proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
            deaths += 1
        assert poll(lambda: r.xlen(KEYS.dead(SAMPLES)) >= 1, 30), log.read_text()[-3000:]
        assert learner.metric("gpo_learner_messages_dead_lettered_total") == 1
        assert learner.stop() == 0
    finally:
        for each in started:  # none outlives the test, whatever failed
            if each.proc.poll() is None:
                each.proc.kill()
    assert 2 <= deaths <= 3, log.read_text()[-3000:]
    dead = r.xrange(KEYS.dead(SAMPLES))
    assert len(dead) == 1 and dead[0][1][b"reason"].startswith(b"crashed_learner: ")
    assert b"bisected from a batch of 4" in dead[0][1][b"reason"]
    assert decode(dead[0][1][b"raw"]).id == "s1"
    assert trained_history(runlog) == Counter(dict.fromkeys(innocent, 1))
    assert pending(r) == 0
    assert not (tmp_path / "ckpt" / "inflight.json").exists()


def test_one_learner_per_run_a_second_is_refused_and_a_crash_is_taken_over(
    redis_server, tmp_path, model_dir
):
    r = redis_server.client()
    config = write_config(tmp_path, model_dir, eval_every=0, lease_seconds=3.0)
    first = Learner(redis_server.url, config, tmp_path / "first.log")
    second = third = None
    try:
        assert poll(lambda: r.get(KEYS.learner_lease()) is not None, 60), (
            tmp_path / "first.log"
        ).read_text()[-3000:]
        holder = r.get(KEYS.learner_lease()).decode()
        # a second learner of the run waits one TTL for the holder, then refuses: one line
        second = Learner(redis_server.url, config, tmp_path / "second.log")
        assert second.proc.wait(60) == 2
        said = (tmp_path / "second.log").read_text()
        assert "another learner is running this run" in said and "Traceback" not in said
        assert r.get(KEYS.learner_lease()).decode() == holder  # still the first's
        # the holder dies without releasing: the next learner takes over within a TTL
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        third = Learner(redis_server.url, config, tmp_path / "third.log")
        assert poll(
            lambda: (r.get(KEYS.learner_lease()) or b"").decode() not in ("", holder), 60
        ), (tmp_path / "third.log").read_text()[-3000:]
        assert third.stop() == 0
        assert r.get(KEYS.learner_lease()) is None  # a clean exit releases it
    finally:
        for proc in (first, second, third):
            if proc is not None and proc.proc.poll() is None:
                proc.proc.kill()
