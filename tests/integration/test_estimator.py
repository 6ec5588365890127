"""gpo-actor and gpo-estimator together on a real redis-server, tiny random model.

Prompts go in; the actor's fresh trajectories are estimated (selection `random`, so every
trajectory gets a reset even when the tiny policy never succeeds); the estimator's reset
requests are served by the actor; the reset rollouts come back to the estimator and leave as
reset samples with advantage reward - V(s_m). The first two tests run the paper's search
(uniform K at every boundary, each search its own continuations), the last the defaults
(failed trajectories only, bisection, shared states, reused continuations)."""

from __future__ import annotations

import math
import time

import numpy as np
from transformers import AutoTokenizer

from ops.redis_server import free_port
from protocol.codec import decode
from protocol.consumer import FIELD
from protocol.streams import GROUP_ESTIMATORS, RESETS, SAMPLES, TRAJECTORIES, Keys
from tests.integration.test_actor import RUN, produce_prompts
from tests.support.procs import GpoProcess

KEYS = Keys(RUN)
K, N, N_RESET = 2, 2, 2


PAPER = 'budget = "uniform"\ntargets = "all"\nshare_states = false'
"""The `[estimator.mc]` lines of the paper's search."""


def config(tmp_path, model_dir, estimator_extra: str = "", search: str = PAPER) -> str:
    path = tmp_path / "run.toml"
    shared = f"""
task = "arithmetic"
[{{p}}.engine]
model = "{model_dir}"
[{{p}}.rollout]
n = {N}
max_new_tokens = 8
seed = 7
"""
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
batch_messages = 4
{shared.replace("{p}", "actor")}
[estimator]
n_reset = {N_RESET}
{estimator_extra}
{shared.replace("{p}", "estimator")}
[estimator.mc]
k = {K}
selection = "random"
{search}
"""
    )
    return str(path)


def read(r, stream):
    return [decode(f[FIELD]) for _, f in r.xrange(KEYS.stream(stream))]


PROMPTS = 3


def run_pipeline(
    redis_server,
    model_dir,
    tmp_path,
    metric: str,
    estimator_extra: str = "",
    ready: str = "",
    search: str = PAPER,
):
    """An actor and an estimator (`estimator_extra` in its section; its start-up line must
    contain `ready`) on PROMPTS prompts until every fresh rollout and its N_RESET reset
    rollouts left as samples (or 120 s); both stopped cleanly. Returns a client and the
    estimator's `metric` read before the stop."""
    cfg = config(tmp_path, model_dir, estimator_extra, search)
    common = ["--config", cfg, "--redis-url", redis_server.url, "--metrics-host", "127.0.0.1"]
    eport = free_port()
    actor = GpoProcess("actors.actor", *common, "--name", "actor-0")
    est = GpoProcess("actors.estimator", *common, "--name", "est-0", "--metrics-port", str(eport))
    actor.wait_for("serving task", 120)
    assert ready in est.wait_for("estimating for task", 120)
    r = redis_server.client()
    tok = AutoTokenizer.from_pretrained(model_dir)
    produce_prompts(r, tok, [f"train:0:{i}" for i in range(PROMPTS)])
    want = PROMPTS * N * (1 + N_RESET)
    deadline = time.monotonic() + 120
    while len(read(r, SAMPLES)) < want and time.monotonic() < deadline:
        time.sleep(0.3)
    value = est.metric(eport, metric)
    assert actor.stop() == 0 and est.stop() == 0
    return r, value


def test_prompts_to_samples_with_resets(redis_server, tiny_model_dir, tmp_path):
    r, rollouts = run_pipeline(
        redis_server,
        tiny_model_dir,
        tmp_path,
        "gpo_estimator_mc_rollouts_total",
        "reuse_mc_rollouts = false",
    )
    n_fresh = PROMPTS * N
    want = n_fresh + n_fresh * N_RESET

    trajs = {t.id: t for t in read(r, TRAJECTORIES)}
    samples = {s.id: s for s in read(r, SAMPLES)}
    resets = {q.id: q for q in read(r, RESETS)}
    assert len(samples) == want == len(trajs), (len(samples), len(trajs), want)
    fresh = [t for t in trajs.values() if t.kind == "fresh"]
    assert len(fresh) == n_fresh and len(resets) == n_fresh
    assert rollouts == sum(K * len(t.step_spans) for t in fresh)  # K at every boundary
    for t in fresh:
        q = resets[f"reset:{t.id}"]
        start = t.step_spans[q.critical_step][0]
        assert (
            q.prefix_token_ids.tolist()
            == t.prefix_token_ids.tolist() + t.completion_token_ids[:start].tolist()
        )
        assert q.value == q.step_values[q.critical_step] and q.n == N_RESET
        assert samples[t.id].step_values[-1] == t.reward
    for t in trajs.values():
        s = samples[t.id]
        p = len(t.prefix_token_ids)
        assert s.loss_mask.tolist() == [0] * p + [1] * len(t.completion_token_ids)
        assert np.array_equal(s.logprobs[p:], t.logprobs)
        if t.kind == "reset":
            assert t.parent_id in {f.id for f in fresh}
            assert np.allclose(s.advantages[p:], t.reward - t.reset_value)
    assert r.xpending(KEYS.stream(TRAJECTORIES), GROUP_ESTIMATORS)["pending"] == 0


def test_reused_mc_rollouts_leave_as_reset_samples_without_requests(
    redis_server, tiny_model_dir, tmp_path
):
    """reuse_mc_rollouts: the K = N_RESET continuations drawn from s_m are the reset rollouts;
    the estimator publishes them as reset samples, no reset request reaches the actor."""
    r, reused = run_pipeline(
        redis_server,
        tiny_model_dir,
        tmp_path,
        "gpo_estimator_mc_rollouts_reused_total",
        "reuse_mc_rollouts = true",
        "MC rollouts reused",
    )
    n_fresh = PROMPTS * N
    want = n_fresh + n_fresh * N_RESET

    trajs = {t.id: t for t in read(r, TRAJECTORIES)}
    samples = {s.id: s for s in read(r, SAMPLES)}
    assert read(r, RESETS) == [] and reused == n_fresh * N_RESET
    assert len(trajs) == n_fresh and all(t.kind == "fresh" for t in trajs.values())
    assert len(samples) == want
    for t in trajs.values():
        own = samples[t.id]
        values = own.step_values  # V(s_0..s_T) of the search
        kids = [samples[f"reset:{t.id}/{j}"] for j in range(N_RESET)]
        for s in kids:
            p = int(np.argmax(s.loss_mask))
            prefix = s.token_ids[:p].tolist()
            kept = p - len(t.prefix_token_ids)
            assert prefix == t.prefix_token_ids.tolist() + t.completion_token_ids[:kept].tolist()
            starts = [a for a, _ in t.step_spans]
            m = starts.index(kept)  # s_m: the prefix ends where step m starts
            assert s.kind == "reset" and s.reward in (0.0, 1.0)
            assert np.allclose(s.advantages[p:], s.reward - values[m])
        # V(s_m) is the mean reward of these same K = N_RESET continuations
        assert np.isclose(np.mean([s.reward for s in kids]), values[m])
    assert r.xpending(KEYS.stream(TRAJECTORIES), GROUP_ESTIMATORS)["pending"] == 0


def test_default_search_bisects_and_every_sample_still_reaches_the_samples_stream(
    redis_server, tiny_model_dir, tmp_path
):
    """The defaults: the tiny random model fails every prompt, so every fresh rollout is
    searched, by bisection, with the states its prompt's rollouts share estimated once; each
    gets its N_RESET reset rollouts, from its own continuations at s_m where the search drew
    some (random selection may pick a step it did not estimate: then by a reset request)."""
    r, rollouts = run_pipeline(
        redis_server,
        tiny_model_dir,
        tmp_path,
        "gpo_estimator_mc_rollouts_total",
        ready="MC rollouts reused",
        search="",
    )
    n_fresh = PROMPTS * N
    trajs = {t.id: t for t in read(r, TRAJECTORIES)}
    samples = {s.id: s for s in read(r, SAMPLES)}
    fresh = [t for t in trajs.values() if t.kind == "fresh"]
    assert len(fresh) == n_fresh and all(t.reward == 0.0 for t in fresh)
    assert len(samples) == n_fresh * (1 + N_RESET)
    requested = {q.id for q in read(r, RESETS)}
    for t in fresh:
        assert len(samples[t.id].step_values) == len(t.step_spans) + 1  # searched
        kids = [
            s for s in samples.values() if s.kind == "reset" and s.id.startswith(f"reset:{t.id}/")
        ]
        assert len(kids) == N_RESET
    # bisection spends K at s_0 and at the midpoints only (a state the rollouts of a prompt
    # share, once); the search never draws more than that
    bisect = sum(K * (1 + math.ceil(math.log2(len(t.step_spans)))) for t in fresh)
    assert 0 < rollouts <= bisect
    # a reset from the search's own continuations makes no request: some resets were reused
    assert len(requested) < n_fresh
    assert r.xpending(KEYS.stream(TRAJECTORIES), GROUP_ESTIMATORS)["pending"] == 0
