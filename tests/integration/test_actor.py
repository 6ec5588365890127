"""gpo-actor against a real redis-server, as real processes, on the tiny random model.

Checks the acceptance of the rollout actor: two actors split a prompt stream (nothing twice,
nothing lost), resets are served before waiting prompts, a published adapter is loaded
(version metric and trajectories' policy_version change), a lagging actor takes no prompts
until it catches up, and user mistakes give one clear line.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter

import pytest
from transformers import AutoTokenizer

from ops.redis_server import free_port
from protocol.adapters import publish_adapter
from protocol.codec import decode, encode
from protocol.config import RedisConfig
from protocol.consumer import FIELD
from protocol.messages import Prompt, ResetRequest
from protocol.streams import GROUP_ACTORS, PROMPTS, RESETS, TRAJECTORIES, Keys, Link
from tests.engine_contract import Learner
from tests.support.procs import GpoProcess
from tests.support.workload import ROOT

RUN = "t"
KEYS = Keys(RUN)


def write_config(tmp_path, model_dir, **actor) -> str:
    actor = {"task": '"arithmetic"', "batch_messages": 4, **actor}
    lines = "\n".join(f"{k} = {v}" for k, v in actor.items())
    path = tmp_path / "run.toml"
    path.write_text(
        f"""
[run]
id = "{RUN}"

[redis]
block_ms = 300
socket_timeout = 3.0
# keep every entry: the checks read the streams afterwards
trim_interval = 0
claim_idle = 10.0
pending_check_interval = 1.0

[actor]
{lines}

[actor.engine]
model = "{model_dir}"

[actor.rollout]
n = 2
max_new_tokens = 8
"""
    )
    return str(path)


def start_actor(cfg: str, url: str, name: str, port: int | None = None) -> GpoProcess:
    args = ["--config", cfg, "--redis-url", url, "--name", name, "--metrics-host", "127.0.0.1"]
    if port:
        args += ["--metrics-port", str(port)]
    p = GpoProcess("actors.actor", *args)
    p.wait_for("serving task", timeout=120)
    return p


def produce_prompts(r, tokenizer, ids) -> None:
    pipe = r.pipeline(transaction=True)
    for pid in ids:
        text = f"Q: {len(pid)}+3\n"
        msg = Prompt(
            id=pid,
            run=RUN,
            ts=time.time(),
            task="arithmetic",
            text=text,
            token_ids=tokenizer(text)["input_ids"],
            answer="0",
            epoch=0,
        )
        pipe.xadd(KEYS.stream(PROMPTS), {FIELD: encode(msg)})
    pipe.incrby(KEYS.produced(PROMPTS), len(ids))
    pipe.execute()


def trajectories(r):
    return [decode(f[FIELD]) for _, f in r.xrange(KEYS.stream(TRAJECTORIES))]


def wait_trajectories(r, count: int, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = trajectories(r)
        if len(got) >= count:
            return got
        time.sleep(0.2)
    raise AssertionError(f"only {len(trajectories(r))} of {count} trajectories")


def publish(url: str, version: int, config: dict, weights: bytes) -> None:
    async def go():
        link = Link(RedisConfig(url=url, run_id=RUN, block_ms=300, socket_timeout=3))
        await publish_adapter(link, KEYS, version, weights, config, "tiny")
        await link.close()

    asyncio.run(go())


@pytest.fixture
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_two_actors_split_prompts_nothing_twice_nothing_lost(
    redis_server, tiny_model_dir, tokenizer, tmp_path
):
    cfg = write_config(tmp_path, tiny_model_dir)
    a, b = start_actor(cfg, redis_server.url, "a"), start_actor(cfg, redis_server.url, "b")
    r = redis_server.client()
    ids = [f"train:0:{i}" for i in range(32)]
    produce_prompts(r, tokenizer, ids)
    got = wait_trajectories(r, 64)
    assert a.stop() == 0 and b.stop() == 0
    got = trajectories(r)
    counts = Counter(t.id for t in got)
    assert sorted(counts) == sorted(f"{i}/{j}" for i in ids for j in (0, 1))  # none lost
    assert set(counts.values()) == {1}  # none served twice
    by_actor = Counter(t.actor for t in got)
    assert set(by_actor) == {"a", "b"}, by_actor  # the stream was split
    assert all(t.kind == "fresh" and t.policy_version == 0 for t in got)
    assert all(len(t.logprobs) == len(t.completion_token_ids) > 0 for t in got)
    assert r.xpending(KEYS.stream(PROMPTS), GROUP_ACTORS)["pending"] == 0


def test_reset_served_before_waiting_prompts(redis_server, tiny_model_dir, tokenizer, tmp_path):
    cfg = write_config(tmp_path, tiny_model_dir, batch_messages=1)
    r = redis_server.client()
    produce_prompts(r, tokenizer, [f"train:0:{i}" for i in range(6)])
    prefix = tokenizer("Q: 1+2\n1+2=3\n")["input_ids"]
    reset = ResetRequest(
        id="reset:train:0:99/1",
        run=RUN,
        ts=time.time(),
        trajectory_id="train:0:99/1",
        prompt_id="train:0:99",
        task="arithmetic",
        answer="3",
        critical_step=1,
        prompt_len=len(tokenizer("Q: 1+2\n")["input_ids"]),
        prefix_token_ids=prefix,
        step_values=[0.5, 0.5, 0.0],
        advantages=[0.0, -0.5],
        value=0.5,
        n=3,
        policy_version=0,
        selection="advantage",
    )
    r.xadd(KEYS.stream(RESETS), {FIELD: encode(reset)})
    actor = start_actor(cfg, redis_server.url, "a")
    got = wait_trajectories(r, 3 + 12)
    assert actor.stop() == 0
    assert [t.kind for t in got[:3]] == ["reset"] * 3, [t.id for t in got]
    first = got[0]
    assert first.parent_id == "train:0:99/1" and first.reset_step == 1 and first.reset_value == 0.5
    assert first.prefix_token_ids.tolist() == prefix and first.prompt_len == reset.prompt_len


def test_adapter_loaded_changes_version_metric_and_trajectories(
    redis_server, tiny_model_dir, tokenizer, tmp_path
):
    cfg = write_config(tmp_path, tiny_model_dir)
    port = free_port()
    actor = start_actor(cfg, redis_server.url, "a", port)
    r = redis_server.client()
    produce_prompts(r, tokenizer, ["train:0:0", "train:0:1"])
    assert {t.policy_version for t in wait_trajectories(r, 4)} == {0}
    assert actor.metric(port, "gpo_actor_policy_version") == 0
    config, weights, _ = Learner(tiny_model_dir).make_adapter(seed=1)
    publish(redis_server.url, 1, config, weights)
    deadline = time.monotonic() + 30
    while actor.metric(port, "gpo_actor_policy_version") != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert actor.metric(port, "gpo_actor_policy_version") == 1, "\n".join(actor.lines[-30:])
    import hashlib
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert f'sha256="{hashlib.sha256(weights).hexdigest()[:12]}"' in body
    produce_prompts(r, tokenizer, ["train:0:2", "train:0:3"])
    got = wait_trajectories(r, 8)
    assert actor.stop() == 0
    assert {t.policy_version for t in got[4:]} == {1}


def test_lagging_actor_takes_no_prompts_until_caught_up(
    redis_server, tiny_model_dir, tokenizer, tmp_path
):
    cfg = write_config(tmp_path, tiny_model_dir, max_policy_lag=0)
    port = free_port()
    actor = start_actor(cfg, redis_server.url, "a", port)
    r = redis_server.client()
    config, weights, _ = Learner(tiny_model_dir).make_adapter(seed=1)
    publish(redis_server.url, 1, config, weights)
    r.set(KEYS.adapter_chunk(1, 0), b"corrupted")  # v1 fails its sha256: the actor stays on 0
    time.sleep(0.5)
    produce_prompts(r, tokenizer, ["train:0:0", "train:0:1"])
    time.sleep(4)
    assert trajectories(r) == [], "a lagging actor took work"
    assert actor.metric(port, "gpo_actor_adapter_rejected_total") >= 1
    assert actor.metric(port, "gpo_actor_policy_lag_wait_seconds_total") > 0
    config2, weights2, _ = Learner(tiny_model_dir).make_adapter(seed=2)
    publish(redis_server.url, 2, config2, weights2)
    got = wait_trajectories(r, 4, timeout=30)
    assert actor.stop() == 0
    assert {t.policy_version for t in got} == {2}


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--model", "/nonexistent/model"], "model directory not found"),
        (["--model", "smollm2"], "`gpo model smollm2` prints"),
        (["--redis-url", "redis://127.0.0.1:1/0"], "cannot reach Redis"),
        (["--set", "actor.batch_messages=0"], "batch_messages"),
        (["--set", "actor.bogus=1"], "unknown key"),
        (["--set", "actor.task='nope:Nope'"], "bad task spec"),
    ],
)
def test_user_mistakes_give_one_clear_line(redis_server, tiny_model_dir, tmp_path, args, expect):
    cfg = write_config(tmp_path, tiny_model_dir)
    base = ["--config", cfg, "--redis-url", redis_server.url]
    p = subprocess.run(
        [sys.executable, "-m", "actors.actor", *base, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert expect in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


def test_sigterm_with_redis_down_exits_zero_after_grace(redis_server, tiny_model_dir, tmp_path):
    """SIGTERM must not hang on an unreachable Redis: reconnect attempts end after the stop
    grace period, the process exits 0, and unacked work is redelivered later."""
    from protocol.process import STOP_GRACE_SECONDS

    cfg = write_config(tmp_path, tiny_model_dir)
    actor = start_actor(cfg, redis_server.url, "a")
    redis_server.kill9()
    time.sleep(1)
    t0 = time.monotonic()
    assert actor.stop(timeout=STOP_GRACE_SECONDS + 30) == 0
    assert time.monotonic() - t0 < STOP_GRACE_SECONDS + 30
    actor.wait_for("stopped without reaching Redis", timeout=5)
    assert not any("Traceback" in line for line in actor.lines), "\n".join(actor.lines[-30:])
