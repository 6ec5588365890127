"""Hostile input at the edges a user reaches, against the real gpo processes (issue 8, item 2).

- Malformed messages in every work stream while learner, actor and estimator run: each goes
  to `<stream>:dead` with its reason, every process keeps running and keeps training on the
  good messages, and nothing already acknowledged is lost.
- User mistakes (config with a wrong type or an unknown key, a missing model, an unreachable
  Redis, a wrong password) end each process with exit code 2, one `error:` line, no
  traceback, quickly.
- An adapter pointer whose chunks are missing or corrupted is rejected and counted; the actor
  stays on the version it has and keeps serving.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from ops.redis_server import RedisServer, free_port
from protocol.codec import encode
from protocol.consumer import FIELD
from protocol.messages import Prompt, ResetRequest, Sample, Trajectory
from protocol.streams import PROMPTS, RESETS, SAMPLES, TRAJECTORIES, WORK_STREAMS
from tests.integration.test_actor import publish
from tests.integration.test_actor import start_actor as start_one_actor
from tests.integration.test_actor import write_config as actor_config
from tests.integration.test_transport_faults import HOSTILE
from tests.support import pipeline
from tests.support.pipeline import KEYS, RUN
from tests.support.workload import ROOT

OUT_OF_VOCAB = 1_000_000

PROMPT = Prompt(
    id="evil:p",
    run=RUN,
    ts=0.0,
    task="arithmetic",
    text="Q: 1+2\n",
    token_ids=[5, 6, 7],
    answer="3",
    epoch=0,
)
RESET = ResetRequest(
    id="reset:evil:t/0",
    run=RUN,
    ts=0.0,
    trajectory_id="evil:t/0",
    prompt_id="evil:p",
    task="arithmetic",
    answer="3",
    critical_step=0,
    prompt_len=2,
    prefix_token_ids=[5, 6, 7],
    step_values=[0.5, 1.0],
    advantages=[0.5],
    value=0.5,
    n=1,
    policy_version=0,
    selection="random",
)
TRAJECTORY = Trajectory(
    id="evil:t/0",
    run=RUN,
    ts=0.0,
    prompt_id="evil:p",
    task="arithmetic",
    answer="3",
    kind="fresh",
    parent_id=None,
    reset_step=None,
    reset_value=None,
    prompt_len=2,
    prefix_token_ids=[5, 6],
    completion_token_ids=[7, 8, 9],
    logprobs=[-1.0, -1.0, -1.0],
    step_spans=[(0, 3)],
    reward=0.0,
    policy_version=0,
    actor="evil",
    gen_seconds=0.0,
)
SAMPLE = Sample(
    id="evil:s",
    run=RUN,
    ts=0.0,
    prompt_id="evil:p",
    kind="fresh",
    token_ids=[5, 6, 7],
    loss_mask=[0, 1, 1],
    logprobs=[0.0, -1.0, -1.0],
    advantages=[0.0, 0.5, 0.5],
    returns=np.zeros(0, np.float32),
    step_values=np.zeros(0, np.float32),
    reward=1.0,
    policy_version=0,
)


def hostile(stream: str) -> dict[str, bytes]:
    """Undecodable bytes (shared with transport test 11) plus, per stream, a well-formed
    message of the wrong type, a token id outside the vocabulary and inconsistent lengths."""
    good = {PROMPTS: PROMPT, RESETS: RESET, TRAJECTORIES: TRAJECTORY, SAMPLES: SAMPLE}[stream]
    tokens = {PROMPTS: "token_ids", RESETS: "prefix_token_ids"}.get(stream, "token_ids")
    if stream == TRAJECTORIES:
        tokens = "completion_token_ids"
    bad_lengths = {
        PROMPTS: replace(PROMPT, token_ids=np.zeros(0, np.int32)),  # empty prompt
        RESETS: replace(RESET, advantages=[0.5, 0.5]),  # len(advantages) != len(values) - 1
        TRAJECTORIES: replace(TRAJECTORY, logprobs=[-1.0]),  # one logprob for three tokens
        SAMPLES: replace(SAMPLE, loss_mask=[0, 1]),  # shorter than token_ids
    }[stream]
    out_of_vocab = replace(good, **{tokens: [5, OUT_OF_VOCAB, 7]})
    wrong_type = SAMPLE if stream == PROMPTS else PROMPT
    return dict(
        HOSTILE,
        wrong_type=encode(wrong_type),
        out_of_vocab=encode(out_of_vocab),
        bad_lengths=encode(bad_lengths),
    )


def inject(r, stream: str, payloads) -> None:
    for raw in payloads:
        r.incrby(KEYS.produced(stream), 1)  # as a producer would: the backlog stays right
        r.xadd(KEYS.stream(stream), {FIELD: raw})


def dead(r, stream: str) -> list[dict]:
    return [{k.decode(): v for k, v in f.items()} for _, f in r.xrange(KEYS.dead(stream))]


@pytest.mark.slow
def test_malformed_messages_in_every_stream_go_dead_and_processing_continues(
    redis_server, tiny_model_dir, tmp_path
):
    r = redis_server.client()
    config = pipeline.write_config(tmp_path, tiny_model_dir)
    procs = pipeline.start(config, redis_server.url)
    try:
        # 1. the pipeline trains: something was produced, processed and acked everywhere
        pipeline.wait_until(lambda: len(pipeline.updates(config)) >= 1, 240, "update 1", procs)
        # 2. hostile entries into every work stream, while it runs
        injected = {s: hostile(s) for s in WORK_STREAMS}
        for stream, payloads in injected.items():
            inject(r, stream, payloads.values())
        before = len(pipeline.updates(config))
        for stream, payloads in injected.items():
            count = len(payloads)
            pipeline.wait_until(
                lambda s=stream, n=count: len(dead(r, s)) >= n,
                120,
                f"{stream}:dead to fill",
                procs,
            )
        # 3. good messages keep flowing: the learner trains on
        pipeline.wait_until(
            lambda: len(pipeline.updates(config)) >= before + 2, 240, "two more updates", procs
        )
        assert all(p.proc.poll() is None for p in procs.values())
    finally:
        codes = pipeline.stop_all(procs)
    assert codes == {"learner": 0, "actor": 0, "estimator": 0}, codes
    for role, p in procs.items():
        assert not any("Traceback" in line for line in p.lines), (role, p.lines[-40:])

    for stream, payloads in injected.items():
        entries = dead(r, stream)
        assert sorted(d["raw"] for d in entries) == sorted(payloads.values()), stream
        by_raw = {d["raw"]: d["reason"].decode() for d in entries}
        for name, raw in payloads.items():
            reason = by_raw[raw]
            want = "wrong_type:" if name == "wrong_type" else "decode:"
            assert reason.startswith(want), (stream, name, reason)
            if name == "out_of_vocab":
                assert "token_out_of_range" in reason, reason
    # nothing that was acknowledged is lost downstream
    books = pipeline.books(r, config)
    assert books.lost == 0, {s: h.lost for s, h in books.hops.items() if h.lost}


# ---------------------------------------------------------------- user mistakes

PROCESSES = {
    "actor": ("actors.actor", "[actor]", "batch_messages", "[actor.engine]"),
    "estimator": ("actors.estimator", "[estimator]", "n_reset", "[estimator.engine]"),
    "learner": ("learner.main", "[learner]", "batch_size", "[learner]"),
}


@pytest.fixture(scope="module")
def redis_pw(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-pw"), password="right-pw").start()
    yield server
    server.stop()


def mistake_config(tmp_path, model_dir, process: str, mistake: str) -> str:
    """The pipeline config with one mistake in `process`'s section."""
    _, section, int_key, model_section = PROCESSES[process]
    text = pipeline.write_config(tmp_path, model_dir).read_text()
    if mistake == "wrong_type":
        text = re.sub(rf"^{int_key} = .*$", f'{int_key} = "four"', text, count=1, flags=re.M)
    elif mistake == "unknown_key":
        text = text.replace(f"{section}\n", f"{section}\nbatch_sise = 4\n", 1)
    elif mistake == "missing_model":
        text = text.replace(
            f'{model_section}\nmodel = "{model_dir}"', f'{model_section}\nmodel = "/nonexistent/m"'
        )
    path = tmp_path / f"{process}-{mistake}.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("process", list(PROCESSES))
@pytest.mark.parametrize(
    "mistake, expect",
    [
        ("wrong_type", "expected int"),
        ("unknown_key", "unknown key(s): batch_sise"),
        ("missing_model", "/nonexistent/m"),
        ("unreachable", "cannot reach Redis"),
        ("wrong_password", "refused the credentials"),
    ],
)
def test_user_mistake_exits_2_with_one_line(
    redis_pw, tiny_model_dir, tmp_path, process, mistake, expect
):
    module = PROCESSES[process][0]
    url = redis_pw.url
    if mistake == "unreachable":
        url = f"redis://127.0.0.1:{free_port()}/0"
    elif mistake == "wrong_password":
        url = url.replace("right-pw", "wrong-pw")
    config = mistake_config(tmp_path, tiny_model_dir, process, mistake)
    start = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", module, "--config", config, "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - start
    err = p.stderr.strip()
    assert p.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and expect in errors[0], err[-3000:]
    assert err.splitlines()[-1] == errors[0]  # the error is the last word
    assert "wrong-pw" not in err and "right-pw" not in err  # passwords are redacted
    assert elapsed < 60, f"{process} took {elapsed:.0f}s to report {mistake}"


# ---------------------------------------------------------------- adapters


def test_adapter_with_missing_or_corrupted_chunks_rejected_actor_stays(
    redis_server, tiny_model_dir, tmp_path
):
    from tests.engine_contract import Learner
    from tests.integration.test_actor import produce_prompts, wait_trajectories

    cfg = actor_config(tmp_path, tiny_model_dir, max_policy_lag=10)
    port = free_port()
    actor = start_one_actor(cfg, redis_server.url, "a", port)
    r = redis_server.client()
    learner = Learner(tiny_model_dir)
    try:
        config1, weights1, _ = learner.make_adapter(seed=1)
        publish(redis_server.url, 1, config1, weights1)
        _wait_metric(actor, port, "gpo_actor_policy_version", 1)
        # v2: a chunk deleted after publishing; v3: a chunk overwritten with other bytes
        config2, weights2, _ = learner.make_adapter(seed=2)
        publish(redis_server.url, 2, config2, weights2)
        r.delete(KEYS.adapter_chunk(2, 0))
        _wait_metric(actor, port, "gpo_actor_adapter_rejected_total", 1)
        config3, weights3, _ = learner.make_adapter(seed=3)
        publish(redis_server.url, 3, config3, weights3)
        chunk = r.get(KEYS.adapter_chunk(3, 0))
        r.set(KEYS.adapter_chunk(3, 0), bytes([chunk[0] ^ 0xFF]) + chunk[1:])
        _wait_metric(actor, port, "gpo_actor_adapter_rejected_total", 2)
        body = _metrics(port)
        assert 'gpo_actor_adapter_rejected_total{reason="missing_chunk"} 1.0' in body
        assert 'gpo_actor_adapter_rejected_total{reason="sha256_mismatch"} 1.0' in body
        assert actor.metric(port, "gpo_actor_policy_version") == 1
        # the actor keeps serving, on the version it has
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tiny_model_dir)
        produce_prompts(r, tok, ["train:0:0", "train:0:1"])
        got = wait_trajectories(r, 4, timeout=60)
        assert {t.policy_version for t in got} == {1}
        assert actor.proc.poll() is None
    finally:
        rc = actor.stop()
    assert rc == 0
    assert not any("Traceback" in line for line in actor.lines)


def _metrics(port: int) -> str:
    import urllib.request

    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _wait_metric(proc, port: int, name: str, value: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while proc.metric(port, name) < value and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.metric(port, name) >= value, (name, proc.lines[-20:])
