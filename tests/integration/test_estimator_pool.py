"""Two gpo-estimator processes share the trajectories stream: nothing is estimated twice, and
when one is killed (-9) in the middle of the MC searches of a batch, the other takes its
trajectories over after `claim_idle` and every trajectory still leaves as exactly one sample."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from transformers import AutoTokenizer

from ops.redis_server import free_port
from protocol.streams import GROUP_ESTIMATORS, SAMPLES, TRAJECTORIES
from tests.integration.test_actor import produce_prompts
from tests.integration.test_estimator import KEYS, config, read
from tests.support.procs import GpoProcess


def test_two_estimators_share_and_take_over(redis_server, tiny_model_dir, tmp_path):
    cfg = config(tmp_path, tiny_model_dir)
    # slow MC searches (K = 12 at every boundary) so that a kill lands inside one
    path = Path(cfg)
    text = (
        path.read_text()
        .replace("k = 2", "k = 12")
        .replace('selection = "random"', 'selection = "none"')
    )
    text = text.replace("[redis]\n", "[redis]\nclaim_idle = 3.0\npending_check_interval = 1.0\n", 1)
    # batches of 2 of the 20 trajectories: each estimator gets several batches
    path.write_text(text.replace("[estimator]\n", "[estimator]\nbatch_messages = 2\n", 1))
    common = ["--config", cfg, "--redis-url", redis_server.url, "--metrics-host", "127.0.0.1"]
    ports = [free_port(), free_port()]
    actor = GpoProcess("actors.actor", *common, "--name", "actor-0")
    e0 = GpoProcess("actors.estimator", *common, "--name", "est-0", "--metrics-port", str(ports[0]))
    e1 = GpoProcess("actors.estimator", *common, "--name", "est-1", "--metrics-port", str(ports[1]))
    for p, text_ in ((actor, "serving task"), (e0, "estimating"), (e1, "estimating")):
        p.wait_for(text_, 120)
    r = redis_server.client()
    produce_prompts(
        r, AutoTokenizer.from_pretrained(tiny_model_dir), [f"train:0:{i}" for i in range(10)]
    )
    n_fresh = 10 * 2
    # wait until est-0 has finished one batch and holds the next one inside its MC search
    # (none of the held trajectories' samples published yet), then kill it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = e0.metric(ports[0], "gpo_estimator_trajectories_estimated_total")
        pending = r.xpending_range(
            KEYS.stream(TRAJECTORIES), GROUP_ESTIMATORS, "-", "+", 100, consumername="est-0"
        )
        published = {s.id for s in read(r, SAMPLES)}
        if done >= 1 and pending and not held_ids(r, pending) & published:
            break
        time.sleep(0.05)
    assert pending, "est-0 never held a trajectory"
    held = pending[0]["message_id"]
    e0.kill()
    # the other estimator claims what est-0 held (claim_idle 3 s), estimates and acks it
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        len(read(r, SAMPLES)) < n_fresh
        or r.xpending(KEYS.stream(TRAJECTORIES), GROUP_ESTIMATORS)["pending"]
    ):
        time.sleep(0.3)
    shared_by_e1 = e1.metric(ports[1], "gpo_estimator_trajectories_estimated_total")
    assert actor.stop() == 0 and e1.stop() == 0
    counts = Counter(s.id for s in read(r, SAMPLES))
    fresh_ids = {t.id for t in read(r, TRAJECTORIES) if t.kind == "fresh"}
    assert set(counts) == fresh_ids and len(fresh_ids) == n_fresh  # none lost
    assert set(counts.values()) == {1}, counts  # none estimated twice
    assert shared_by_e1 >= 1 and done >= 1  # both estimators did work
    owners = r.xpending(KEYS.stream(TRAJECTORIES), GROUP_ESTIMATORS)
    assert owners["pending"] == 0, owners
    (entry,) = r.xrange(KEYS.stream(TRAJECTORIES), held, held)
    from protocol.codec import decode
    from protocol.consumer import FIELD

    assert decode(entry[1][FIELD]).id in counts  # what est-0 held when killed was taken over


def held_ids(r, pending) -> set[str]:
    """Trajectory ids of the pending entries `pending` (XPENDING rows)."""
    from protocol.codec import decode
    from protocol.consumer import FIELD

    ids = set()
    for row in pending:
        for _, fields in r.xrange(KEYS.stream(TRAJECTORIES), row["message_id"], row["message_id"]):
            ids.add(decode(fields[FIELD]).id)
    return ids
