"""RELIABILITY.md fault tests against the real gpo processes on the tiny policy.

Each test starts gpo-learner, gpo-actor and gpo-estimator processes (`System` in
tests/support/pipeline.py) on the base policy of `gpo bootstrap` and a private redis-server,
injects the fault with real signals, and asserts on the ledger built from the streams and
the learner's run log of trained ids (`pipeline.books`, ops/ledger.py): nothing acknowledged
is lost downstream, no sample is trained twice, nothing is trained that was never produced, the dead
streams hold exactly what the test expects; plus the counters each rule names.

Which test runs each RELIABILITY.md test that involves a process against the real ones:

| #  | fault                                  | test (this file unless named)                     |
|----|----------------------------------------|---------------------------------------------------|
| 1  | kill -9 an actor holding 5 unacked     | test_01 (another actor claims them)               |
| 2  | SIGTERM mid-batch                      | test_02 (estimator, actor, learner in turn)       |
| 3  | restart under the same name            | test_03 (actor; claims off, so only its own       |
|    |                                        | pending list can give the work back)              |
| 6  | kill -9 Redis with AOF, restart        | test_06_20 (all processes on uvloop)              |
| 7  | the same without persistence           | test_07_20 (all processes on asyncio)             |
| 8  | Redis paused 10 s                      | test_08                                           |
| 9  | Redis down 30 s                        | test_09 (slow)                                    |
| 10 | poison message                         | test_10: a reset request that kills the actor     |
|    |                                        | every time (kill -9 plays the OOM killer, the     |
|    |                                        | test the supervisor); undecodable and invalid     |
|    |                                        | messages in every stream: test_hostile_input.py   |
|    |                                        | (the real processes have no handler that fails    |
|    |                                        | and retries: they exit, and restarts redeliver)   |
| 12 | slow consumer keeps its message        | test_12 (estimators, MC searches > claim_idle);   |
|    |                                        | test_estimator_pool.py (kill mid-search)          |
| 13 | zombie consumer                        | test_13 (estimator, SIGSTOP past claim_idle)      |
| 15 | learner stalled                        | test_15 (20 s, maxmemory + noeviction; slow)      |
|    | memory plateaus (trimming)             | test_15_memory_plateaus (maxmemory 32mb; streams  |
|    |                                        | trimmed, every pending entry kept); OOM as        |
|    |                                        | backpressure, dead-letter cap:                    |
|    |                                        | test_redis_memory.py                              |
| 16 | adapter broadcast, one down, corrupted | test_16 (3 actors + estimator); the fan-out to 8  |
|    |                                        | followers: test_adapter_broadcast.py (follower    |
|    |                                        | processes); a real actor rejecting a missing or   |
|    |                                        | corrupted chunk: test_hostile_input.py            |
| 17 | scale out and in mid-run               | test_17 (actors and estimators)                   |
| 18 | kill -9 learner between step and ack   | test_18 (whole pipeline); every kill point with   |
|    |                                        | injected samples: test_learner_process.py         |
| 20 | Redis restart, retries off, both loops | test_06_20 (uvloop) and test_07_20 (asyncio:      |
|    |                                        | tests/support/no_uvloop hides uvloop)             |
| 21 | password / ACL user and TLS            | test_acl_tls.py (a user per role over TLS, the    |
|    |                                        | ledger); a wrong password fails each process      |
|    |                                        | fast: test_hostile_input.py (wrong_password)      |
| 22 | Prometheus scraping every process      | tests/e2e/test_prometheus.py (a real Prometheus   |
|    |                                        | on `gpo launch`; counters vs Redis and run log)   |

21 and 22 run on the tiny random model (tests/conftest.py), the rest on the tiny policy.
The other RELIABILITY.md tests are about one call or one stream rather than a process:
4, 5, 14 and 19 run in test_transport_faults.py, 11 in test_hostile_input.py, and the soak
(23) in tests/e2e/test_chaos.py. Redis freezes inside single calls of the real processes
are exercised by 8 and 9.
"""

from __future__ import annotations

import re
import signal
import time
from statistics import linear_regression

import pytest

from ops.ledger import Ledger
from ops.redis_server import RedisServer
from protocol.codec import decode, encode
from protocol.consumer import FIELD
from protocol.messages import ResetRequest
from protocol.streams import GROUP_ACTORS, PROMPTS, RESETS, SAMPLES, TRAJECTORIES, WEIGHTS
from tests.support import pipeline
from tests.support.pipeline import System

TOKENS = 48
"""Longest completion: room for the tiny policy's whole solution (its steps end in EOS)."""

pytestmark = pytest.mark.timeout(300)  # a cold cache adds building the policy (1-3 min)


@pytest.fixture(scope="module")
def tiny_policy() -> str:
    """The base policy of `gpo bootstrap` (default config): built once, cached on disk."""
    from ops.tiny_policy.bootstrap import BootstrapConfig, bootstrap

    return str(bootstrap(BootstrapConfig()))


@pytest.fixture
def make_system(tmp_path, tiny_policy):
    systems: list[System] = []

    def make(url: str, settings: dict | None = None, loop: str = "uvloop") -> System:
        config = pipeline.write_config(tmp_path, tiny_policy, max_new_tokens=TOKENS)
        system = System(config, url, *pipeline.settings(settings or {}), loop=loop)
        systems.append(system)
        return system

    yield make
    for system in systems:
        system.close()


def wait(pred, timeout: float, what: str, system: System, step: float = 0.1) -> None:
    pipeline.wait_until(pred, timeout, what, system.procs, step)


def updates(system: System) -> int:
    return len(pipeline.updates(system.config))


def check_books(r, system: System, dead: dict | None = None) -> Ledger:
    """Lost = 0, trained twice = 0, nothing dropped stale, nothing trained that was never
    produced, and the dead streams hold exactly `dead` (stream -> entry ids; none by
    default)."""
    books = pipeline.books(r, system.config)
    assert books.lost == 0, {s: h.lost for s, h in books.hops.items() if h.lost}
    assert books.trained_twice == {}, books.trained_twice
    assert books.hops[SAMPLES].stale == 0, books.stale_reason()
    assert books.trained_unknown == set(), books.trained_unknown
    assert books.dead_sources == (dead or {}), books.dead_sources
    assert books.trained_ids, "nothing was trained: the test proves nothing"
    return books


def stop_cleanly(system: System) -> None:
    codes = system.stop_all()
    assert set(codes.values()) == {0}, (codes, system.tails())
    for name, p in system.procs.items():
        assert not any("Traceback" in line for line in p.lines), (name, p.lines[-40:])


# 1 -------------------------------------------------------------------------------------


def test_01_kill9_actor_holding_five_all_redelivered_and_trained_once(redis_server, make_system):
    r = redis_server.client()
    system = make_system(
        redis_server.url,
        {
            "redis.claim_idle": 3.0,
            "redis.pending_check_interval": 0.5,
            "redis.backlog_limits": {"trajectories": 4},
            "actor.batch_messages": 5,
            "learner.feeder.backlog_target": 12,
            "learner.feeder.backlog_bound": 24,
        },
    )
    system.start("learner", "estimator-0", "actor-0", "actor-1")
    wait(lambda: updates(system) >= 1, 120, "update 1", system)
    # The estimator stops reading: the trajectories backlog fills, and each actor holds the
    # batch it generated while it waits for room to publish it.
    system["estimator-0"].signal(signal.SIGSTOP)
    victim = pipeline.holding(r, system, ["actor-0", "actor-1"], 5)
    held = pipeline.held(r, victim)
    system.retire(victim).kill()
    system["estimator-0"].signal(signal.SIGCONT)
    survivor = next(n for n in ("actor-0", "actor-1") if n != victim)
    want = pipeline.descendants(held)
    wait(lambda: set(want) <= pipeline.settled(system.config), 90, "held work", system)
    assert system[survivor].value("gpo_actor_messages_redelivered_total") >= 5
    assert pipeline.pending(r, PROMPTS, victim) + pipeline.pending(r, RESETS, victim) == []
    stop_cleanly(system)
    books = check_books(r, system)
    assert {i: books.trained_ids[i] for i in want} == dict.fromkeys(want, 1)


# 2 -------------------------------------------------------------------------------------


def test_02_sigterm_mid_batch_exits_zero_fast_nothing_pending_for_long(redis_server, make_system):
    r = redis_server.client()
    limits = {"trajectories": 4, "samples": 6}
    # prompts always waiting: the learner is stopped right after an update, when its feeder
    # may not have topped up yet, and the samples it waits for must still be produced
    feed = {"learner.feeder.backlog_target": 12, "learner.feeder.backlog_bound": 24}
    system = make_system(redis_server.url, {"redis.backlog_limits": limits, **feed})
    names = ("learner", "estimator-0", "actor-0")
    system.start(*names)
    wait(lambda: updates(system) >= 1, 120, "update 1", system)

    def sigterm(name: str) -> None:
        proc = system.retire(name)
        start = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.proc.wait(10) == 0, proc.lines[-30:]
        assert time.monotonic() - start < 10

    # 1. the learner stalls: the estimator holds trajectories, waiting for room in `samples`
    system["learner"].signal(signal.SIGSTOP)
    wait(lambda: pipeline.backlog(r, SAMPLES) >= limits["samples"], 60, "samples full", system)
    wait(lambda: pipeline.pending(r, TRAJECTORIES, "estimator-0"), 30, "held", system)
    held = pipeline.pending(r, TRAJECTORIES, "estimator-0")
    sigterm("estimator-0")
    assert pipeline.pending(r, TRAJECTORIES, "estimator-0") == []
    assert {sample_id(r, e) for e in held} <= pipeline.message_ids(r, SAMPLES)  # published
    # 2. the learner feeds prompts again; with no estimator the actor holds a generated
    # batch, waiting for room in `trajectories`
    system["learner"].signal(signal.SIGCONT)
    wait(lambda: pipeline.backlog(r, TRAJECTORIES) >= limits["trajectories"], 60, "full", system)
    want = pipeline.descendants(pipeline.held(r, pipeline.holding(r, system, ["actor-0"], None)))
    sigterm("actor-0")
    assert pipeline.pending(r, PROMPTS, "actor-0") + pipeline.pending(r, RESETS, "actor-0") == []
    assert set(want) <= pipeline.message_ids(r, TRAJECTORIES)  # published before exit
    # 3. the learner, waiting for the rest of a batch
    sigterm("learner")
    left = {s: pipeline.pending(r, s) for s in (PROMPTS, RESETS, TRAJECTORIES, SAMPLES)}
    # everything left pending is taken up at once by the next processes of the same names
    system.start(*names)
    wait(
        lambda: all(not set(ids) & set(pipeline.pending(r, s)) for s, ids in left.items()),
        30,
        "the work left pending",
        system,
    )
    wait(lambda: set(want) <= pipeline.settled(system.config), 60, "held work", system)
    stop_cleanly(system)
    check_books(r, system)


# 3 -------------------------------------------------------------------------------------


def test_03_restarted_actor_drains_its_own_pending_first(redis_server, make_system):
    r = redis_server.client()
    system = make_system(
        redis_server.url,
        {
            "redis.claim_idle": 600.0,  # nobody claims: only the own pending list gets them back
            "redis.backlog_limits": {"trajectories": 4},
            "actor.batch_messages": 5,
            "learner.feeder.backlog_target": 12,
            "learner.feeder.backlog_bound": 24,
        },
    )
    system.start("learner", "estimator-0", "actor-0")
    wait(lambda: updates(system) >= 1, 120, "update 1", system)
    system["estimator-0"].signal(signal.SIGSTOP)
    held = pipeline.held(r, pipeline.holding(r, system, ["actor-0"], 5))
    system.retire("actor-0").kill()
    mark = "(" + r.xinfo_stream(pipeline.KEYS.stream(TRAJECTORIES))["last-generated-id"].decode()
    system["estimator-0"].signal(signal.SIGCONT)
    wait(lambda: pipeline.backlog(r, PROMPTS) >= 12, 30, "new prompts waiting", system)
    system.start("actor-0")
    want = pipeline.descendants(held)
    wait(lambda: set(want) <= pipeline.settled(system.config), 90, "held work", system)
    # what the new incarnation served first, before any of the waiting work, is what the
    # old one held
    after = r.xrange(pipeline.KEYS.stream(TRAJECTORIES), mark, "+", count=len(want))
    assert sorted(decode(f[FIELD]).id for _, f in after) == sorted(want)
    assert system["actor-0"].value("gpo_actor_messages_redelivered_total") >= 5
    stop_cleanly(system)
    books = check_books(r, system)
    assert {i: books.trained_ids[i] for i in want} == dict.fromkeys(want, 1)


# 6, 7, 20 ----------------------------------------------------------------------------------


def reconnected(system: System, since: dict[str, float]) -> bool:
    return all(
        p.value(f"gpo_{name.split('-')[0]}_redis_reconnects_total") > since[name]
        for name, p in system.procs.items()
    )


def reconnects(system: System) -> dict[str, float]:
    return {
        name: p.value(f"gpo_{name.split('-')[0]}_redis_reconnects_total")
        for name, p in system.procs.items()
    }


def test_06_20_kill9_redis_with_aof_restores_everything_uvloop(redis_aof, make_system):
    r = redis_aof.client()
    system = make_system(redis_aof.url)
    system.start("learner", "estimator-0", "actor-0")
    wait(lambda: updates(system) >= 2, 120, "update 2", system)
    assert all(p.maps("uvloop") for p in system.procs.values())
    before = pipeline.snapshot(r)
    time.sleep(2.5)  # appendfsync everysec: everything in the snapshot is on disk
    redis_aof.kill9()
    time.sleep(1)
    redis_aof.restart()
    r = redis_aof.client()
    after = pipeline.snapshot(r)  # groups exist (snapshot would raise otherwise)
    for stream, old in before.items():
        new = after[stream]
        assert new["last"] >= old["last"], stream
        assert old["acked"] <= new["acked"], f"acknowledged {stream} entries lost"
        assert old["pending"] <= new["pending"] | new["acked"], f"{stream} pending list lost"
    done, counts = updates(system), reconnects(system)
    wait(lambda: updates(system) >= done + 2, 60, "two more updates", system)
    assert all(n >= 1 for n in counts.values()), counts  # each one reconnected by itself
    stop_cleanly(system)
    check_books(r, system)


def test_07_20_redis_restart_without_persistence_groups_recreated_asyncio(
    redis_server, make_system
):
    r = redis_server.client()
    system = make_system(redis_server.url, loop="asyncio")
    system.start("learner", "estimator-0", "actor-0")
    wait(lambda: updates(system) >= 1, 120, "update 1", system)
    assert not any(p.maps("uvloop") for p in system.procs.values())
    redis_server.restart()  # kill -9, no AOF: streams, groups and counters are gone
    r = redis_server.client()
    done = updates(system)
    wait(lambda: updates(system) >= done + 2, 90, "two more updates", system)
    for name, p in system.procs.items():  # each noticed NOGROUP, counted it and went on
        assert p.value(f"gpo_{name.split('-')[0]}_group_resets_total") >= 1, name
    stop_cleanly(system)
    books = pipeline.books(r, system.config)  # what Redis lost is gone; the rest is whole
    assert (books.lost, books.trained_twice) == (0, {}), books.failures


# 8 -------------------------------------------------------------------------------------


def test_08_redis_paused_10s_calls_time_out_nobody_exits_throughput_recovers(
    redis_server, make_system
):
    r = redis_server.client()
    system = make_system(redis_server.url)
    system.start("learner", "estimator-0", "actor-0")
    wait(lambda: updates(system) >= 1, 120, "update 1", system)
    since = reconnects(system)
    redis_server.pause()
    paused = time.monotonic()
    try:
        # socket_timeout is 3 s: every process's call in flight fails and it reconnects
        wait(lambda: reconnected(system, since), 8, "every process to time out", system)
        time.sleep(max(0.0, 10 - (time.monotonic() - paused)))
        assert system.alive(), system.tails()
    finally:
        redis_server.resume()
    done = updates(system)
    traj = r.xlen(pipeline.KEYS.stream(TRAJECTORIES))
    wait(lambda: r.xlen(pipeline.KEYS.stream(TRAJECTORIES)) > traj, 15, "new trajectories", system)
    wait(lambda: updates(system) >= done + 2, 60, "two more updates", system)
    stop_cleanly(system)
    check_books(r, system)


# 9 -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_09_redis_down_30s_processes_stay_up_memory_bounded_work_resumes(redis_aof, make_system):
    r = redis_aof.client()
    system = make_system(redis_aof.url)
    system.start("learner", "estimator-0", "actor-0")
    wait(lambda: updates(system) >= 1, 120, "update 1", system)
    redis_aof.kill9()
    down = time.monotonic()
    time.sleep(3)
    rss = {name: p.rss_bytes() for name, p in system.procs.items()}
    while time.monotonic() - down < 30:
        assert system.alive(), system.tails()
        time.sleep(1)
    grown = {name: p.rss_bytes() - rss[name] for name, p in system.procs.items()}
    assert all(g < 32 * 2**20 for g in grown.values()), grown  # reconnect loops hold nothing
    redis_aof.restart()
    back = time.monotonic()
    r = redis_aof.client()
    counts = {s: r.xlen(pipeline.KEYS.stream(s)) for s in (TRAJECTORIES, SAMPLES)}
    done = updates(system)
    for stream, n in counts.items():
        wait(lambda s=stream, n=n: r.xlen(pipeline.KEYS.stream(s)) > n, 15, stream, system)
    resumed = time.monotonic() - back
    wait(lambda: updates(system) > done, 30, "an update", system)
    assert resumed < 10, f"work resumed {resumed:.1f} s after Redis returned"
    stop_cleanly(system)
    check_books(r, system)


# 10 ------------------------------------------------------------------------------------


def poison_reset(tokenizer, n: int) -> ResetRequest:
    """A well-formed reset request asking for `n` rollouts (within the actors' raised
    `max_reset_n`): slow enough that the actor holding it is killed every time (an OOM
    killer, played here by the test)."""
    prompt = "Q: 12+30-7\n"
    prefix = tokenizer(prompt + "12+30=42\n")["input_ids"]
    return ResetRequest(
        id="reset:poison/0",
        run=pipeline.RUN,
        ts=time.time(),
        trajectory_id="poison/0",
        prompt_id="poison",
        task="arithmetic",
        answer="35",
        critical_step=1,
        prompt_len=len(tokenizer(prompt)["input_ids"]),
        prefix_token_ids=prefix,
        step_values=[0.5, 0.5, 0.0],
        advantages=[0.0, -0.5],
        value=0.5,
        n=n,
        policy_version=0,
        selection="advantage",
    )


def deliveries(r, stream: str, entry_id: str) -> int:
    rows = r.xpending_range(pipeline.KEYS.stream(stream), GROUP_ACTORS, entry_id, entry_id, 1)
    return int(rows[0]["times_delivered"]) if rows else 0


def test_10_message_that_kills_its_actor_is_dead_lettered_once_others_flow(
    redis_server, make_system, tiny_policy
):
    from transformers import AutoTokenizer

    r = redis_server.client()
    max_deliveries = 2
    system = make_system(
        redis_server.url,
        {
            "redis.max_deliveries": max_deliveries,
            "redis.claim_idle": 600.0,
            "actor.max_reset_n": 2048,
            # prompts always waiting: the poison's first batch is full of other work
            "learner.feeder.backlog_target": 12,
            "learner.feeder.backlog_bound": 24,
        },
    )
    system.start("learner", "estimator-0", "actor-0")
    wait(lambda: updates(system) >= 1, 120, "update 1", system)
    raw = encode(poison_reset(AutoTokenizer.from_pretrained(tiny_policy), n=2048))
    r.incrby(pipeline.KEYS.produced(RESETS), 1)
    poison = r.xadd(pipeline.KEYS.stream(RESETS), {FIELD: raw}).decode()
    mates: dict[str, dict] = {PROMPTS: {}, RESETS: {}}
    for attempt in range(1, max_deliveries + 1):
        # the actor takes it (first with other work in the same batch, then alone, as a
        # redelivery) and is killed holding it; a supervisor restarts it under the same name
        wait(lambda a=attempt: deliveries(r, RESETS, poison) == a, 60, "poison taken", system)
        held = pipeline.held(r, "actor-0")
        system.retire("actor-0").kill()
        for stream, msgs in held.items():
            mates[stream].update({m.id: m for m in msgs if m.id != "reset:poison/0"})
        system.start("actor-0")
    dead_key = pipeline.KEYS.dead(RESETS)
    wait(lambda: r.xlen(dead_key) >= 1, 30, "the poison in the dead stream", system)
    done = updates(system)
    wait(lambda: updates(system) >= done + 2, 60, "two more updates", system)
    dead = [f for _, f in r.xrange(dead_key)]
    assert [f[b"source_id"].decode() for f in dead] == [poison]  # once, and nothing else
    assert dead[0][b"raw"] == raw and dead[0][b"reason"].startswith(b"max_deliveries")
    assert poison not in pipeline.pending(r, RESETS)  # acked at the source
    assert system["actor-0"].value("gpo_actor_messages_dead_lettered_total") == 1
    # the messages killed alongside the poison were not dead-lettered with it
    want = pipeline.descendants({stream: list(msgs.values()) for stream, msgs in mates.items()})
    assert want, "the poison was always alone: the test proves nothing about the others"
    wait(lambda: set(want) <= pipeline.settled(system.config), 60, "the others", system)
    stop_cleanly(system)
    books = check_books(r, system, dead={RESETS: [poison]})
    assert {i: books.trained_ids[i] for i in want} == dict.fromkeys(want, 1)


# 12, 13 --------------------------------------------------------------------------------

SLOW_SEARCH = {
    "estimator.mc.k": 128,  # MC searches of a second or more on the tiny policy
    # one trajectory per search: a batch's seconds are shared among its trajectories, and a
    # frozen estimator holding one trajectory is taken over by one search
    "estimator.batch_messages": 1,
    "redis.claim_idle": 1.0,
    "redis.pending_check_interval": 0.3,
}


def searches_over(proc, seconds: float) -> float:
    """How many MC searches of `proc` took longer than `seconds` (a histogram bucket bound)."""
    lines = proc.metrics_text().splitlines()
    name = "gpo_estimator_trajectory_seconds"
    count = next(float(x.split()[-1]) for x in lines if x.startswith(f"{name}_count"))
    under = next(
        float(x.split()[-1]) for x in lines if x.startswith(f'{name}_bucket{{le="{seconds}"')
    )
    return count - under


def freeze_holding(r, name: str, system: System) -> list[str]:
    """SIGSTOP estimator `name` while it holds trajectories; the entry ids it holds."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        wait(lambda: pipeline.pending(r, TRAJECTORIES, name), 60, f"{name} holding", system)
        system[name].signal(signal.SIGSTOP)
        if held := pipeline.pending(r, TRAJECTORIES, name):
            return held
        system[name].signal(signal.SIGCONT)  # it acked in between: try again
    raise AssertionError(f"{name} never held a trajectory long enough")


def sample_id(r, entry_id: str) -> str:
    ((_, fields),) = r.xrange(pipeline.KEYS.stream(TRAJECTORIES), entry_id, entry_id)
    return decode(fields[FIELD]).id


def test_12_slow_estimator_keeps_its_trajectory_until_killed_then_it_is_taken_over(
    redis_server, make_system
):
    r = redis_server.client()
    # K = 512: searches stay longer than claim_idle on an idle machine too
    system = make_system(redis_server.url, SLOW_SEARCH | {"estimator.mc.k": 512})
    system.start("learner", "actor-0", "estimator-0", "estimator-1")
    estimators = ("estimator-0", "estimator-1")
    # searches longer than claim_idle: each owner's lease keeps its trajectory
    wait(
        lambda: sum(searches_over(system[e], 1.0) for e in estimators) >= 3,
        120,
        "three searches longer than claim_idle",
        system,
    )
    for e in estimators:
        assert system[e].value("gpo_estimator_messages_redelivered_total") == 0, e
        assert system[e].value("gpo_estimator_lease_lost_total") == 0, e
    samples = pipeline.message_ids_counted(r, SAMPLES)
    assert samples and set(samples.values()) == {1}  # no trajectory estimated twice
    # the slow owner dies: the other one takes what it held over
    held = freeze_holding(r, "estimator-0", system)
    system.retire("estimator-0").kill()
    want = [sample_id(r, entry) for entry in held]
    wait(lambda: set(want) <= pipeline.settled(system.config), 60, "its work", system)
    assert system["estimator-1"].value("gpo_estimator_messages_redelivered_total") >= len(held)
    stop_cleanly(system)
    books = check_books(r, system)
    assert {i: books.trained_ids[i] for i in want} == dict.fromkeys(want, 1)


def test_13_zombie_estimator_late_output_recognised_as_duplicate_and_dropped(
    redis_server, make_system
):
    r = redis_server.client()
    system = make_system(redis_server.url, SLOW_SEARCH | {"estimator.mc.k": 32})
    system.start("learner", "actor-0", "estimator-0", "estimator-1")
    wait(lambda: updates(system) >= 1, 120, "update 1", system)
    zombie = system["estimator-0"]
    # frozen (SIGSTOP) while it holds trajectories, past claim_idle: another takes them over
    want = sample_id(r, freeze_holding(r, "estimator-0", system)[0])
    wait(lambda: want in pipeline.settled(system.config), 60, "taken over and trained", system)
    dropped = system["learner"].value("gpo_learner_samples_dropped_duplicate_total")
    zombie.signal(signal.SIGCONT)
    # it wakes, finishes its search, publishes the same sample id again; its ack is refused
    wait(lambda: zombie.value("gpo_estimator_lease_lost_total") >= 1, 60, "late ack", system)
    wait(
        lambda: system["learner"].value("gpo_learner_samples_dropped_duplicate_total") > dropped,
        60,
        "the late sample dropped as a duplicate",
        system,
    )
    assert pipeline.message_ids_counted(r, SAMPLES)[want] == 2  # it was published twice ...
    stop_cleanly(system)
    books = check_books(r, system)
    assert books.trained_ids[want] == 1  # ... and trained once


# 15 ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_15_learner_stalled_producers_throttle_memory_bounded_backlog_drains(tmp_path, make_system):
    """The learner is frozen (SIGSTOP) for 20 s, not 60: long past claim_idle (3 s), and
    every backlog reaches its bound within seconds, which is what the 60 s are for. Two
    estimators: one that waits for room keeps its lease, so the other never redoes its
    work (it did, before estimators leased through publishing)."""
    maxmemory = 64 * 2**20
    server = RedisServer(
        tmp_path / "redis-maxmem",
        extra=("--maxmemory", str(maxmemory), "--maxmemory-policy", "noeviction"),
    ).start()
    try:
        r = server.client()
        limits = {"trajectories": 8, "samples": 8}
        # prompts always waiting, so the producers have work to hold once the learner stops
        # (its feeder stops with it)
        feed = {"learner.feeder.backlog_target": 12, "learner.feeder.backlog_bound": 24}
        system = make_system(
            server.url, {"redis.backlog_limits": limits, "redis.claim_idle": 3.0, **feed}
        )
        system.start("learner", "actor-0", "estimator-0", "estimator-1")
        wait(lambda: updates(system) >= 1, 120, "update 1", system)
        system["learner"].signal(signal.SIGSTOP)
        stalled = time.monotonic()
        peak = {TRAJECTORIES: 0, SAMPLES: 0}
        while time.monotonic() - stalled < 20:
            for stream in peak:
                peak[stream] = max(peak[stream], pipeline.backlog(r, stream))
            time.sleep(0.2)
        assert r.info("memory")["used_memory_peak"] < maxmemory
        # No backlog passed its bound. The bound is per producer (each keeps its own
        # estimate below the limit between reads of the counters, and sends a batch in
        # chunks that fit below it): two estimators, each publishing up to 1 + n_reset
        # samples per trajectory, may fill `samples` to twice its limit; the one actor
        # keeps `trajectories` at its limit.
        assert peak[SAMPLES] >= limits["samples"], peak  # the stall was felt
        assert peak[SAMPLES] <= 2 * limits["samples"], peak
        assert peak[TRAJECTORIES] <= limits["trajectories"], peak
        # an estimator with work in hand was held back for most of the stall (the other may
        # have had no trajectory left, and the actor is starved rather than held back: the
        # prompt feeder is part of the stalled learner)
        waits = {
            name: system[name].value("gpo_estimator_backpressure_wait_seconds_total")
            for name in ("estimator-0", "estimator-1")
        }
        assert max(waits.values()) > 10, waits
        system["learner"].signal(signal.SIGCONT)
        done = updates(system)
        wait(lambda: pipeline.backlog(r, SAMPLES) < limits["samples"], 60, "drain", system)
        wait(lambda: updates(system) >= done + 3, 60, "three more updates", system)
        # a producer waiting for room keeps the work it holds: nobody took it over
        for name, p in system.procs.items():
            assert p.value(f"gpo_{name.split('-')[0]}_lease_lost_total") == 0, name
        stop_cleanly(system)
        check_books(r, system)
    finally:
        server.stop()


@pytest.mark.slow
def test_15_memory_plateaus_streams_trimmed_nothing_pending_lost(tmp_path, make_system):
    """A pipeline under maxmemory 32mb, trimming every second, for 45 s: the work streams
    hold a bounded number of entries while the produced counters keep growing, their memory
    stops growing, Redis never refuses a write, no process restarts, and every entry still
    pending or undelivered at the end is in its stream (a trim never takes one). The learner
    hop balances exactly: samples acked = trained + dropped surplus (no stale drop at this
    lag, no duplicate without a fault)."""
    server = RedisServer(
        tmp_path / "redis-32mb",
        extra=("--maxmemory", str(32 * 2**20), "--maxmemory-policy", "noeviction"),
    ).start()
    streams = (PROMPTS, RESETS, TRAJECTORIES, SAMPLES)
    try:
        r = server.client()
        limits = {"trajectories": 16, "samples": 32}
        system = make_system(
            server.url,
            {"redis.trim_interval": 1.0, "redis.backlog_limits": limits, "learner.read_ahead": 16},
        )
        system.start("learner", "actor-0", "estimator-0")
        wait(lambda: updates(system) >= 1, 120, "update 1", system)
        start = time.monotonic()
        seen = []  # (seconds, entries in the work streams, their bytes, produced so far)
        while (t := time.monotonic() - start) < 45:
            keys = [pipeline.KEYS.stream(s) for s in streams]
            entries = sum(r.xlen(k) for k in keys)
            size = sum(r.memory_usage(k) or 0 for k in keys)
            produced = sum(int(r.get(pipeline.KEYS.produced(s)) or 0) for s in streams)
            seen.append((t, entries, size, produced))
            assert system.alive(), system.tails()
            time.sleep(1.0)
        assert r.info("memory")["used_memory_peak"] < 32 * 2**20
        # Production goes on while the streams stop growing. Their length swings with how
        # long the oldest entry stays pending (acked entries behind it stay until it goes),
        # so the test is on the trend over the whole watch, not on two windows' maxima: an
        # untrimmed stream grows by every entry produced, a trimmed one by none on average.
        times, entries, size, produced = zip(*seen)
        shown = [(round(t), n, b // 1024, p) for t, n, b, p in seen[::5]]
        rate = linear_regression(times, produced).slope
        growth = linear_regression(times, entries).slope
        growth_bytes = linear_regression(times, size).slope
        per_entry = sum(size) / sum(entries)
        # the streams never held more than a tenth of what passed through them in the watch
        assert produced[-1] - produced[0] > 10 * max(entries), shown
        assert growth < 0.05 * rate, (growth, rate, shown)
        assert growth_bytes < 0.05 * rate * per_entry, (growth_bytes, per_entry, shown)
        for name, p in system.procs.items():
            role = name.split("-")[0]
            assert p.value(f"gpo_{role}_redis_oom_waits_total") == 0, name
            assert p.value(f"gpo_{role}_stream_trimmed_total") > 0, name
        stop_cleanly(system)
        for stream in streams:  # nothing pending or undelivered was trimmed
            key = pipeline.KEYS.stream(stream)
            for eid in pipeline.pending(r, stream):
                assert r.xrange(key, eid, eid), (stream, eid)
        settled = pipeline.settled(system.config)
        assert int(r.get(pipeline.KEYS.acked(SAMPLES))) == len(settled)
        assert sum(pipeline.trained(system.config).values()) == len(pipeline.trained(system.config))
    finally:
        server.stop()


# 16 ------------------------------------------------------------------------------------


def test_16_adapter_broadcast_one_actor_down_corrupted_version_rejected(redis_server, make_system):
    """Three real actors and an estimator follow the learner's adapters (the fan-out to 8
    followers is tests/integration/test_adapter_broadcast.py's): one is down while versions
    are published, and the version it finds on restart has a corrupted chunk. Every process
    fetches from Redis here (no host cache: the others' verified copy would serve it)."""
    r = redis_server.client()
    no_cache = '"off"'
    system = make_system(
        redis_server.url,
        {
            "actor.max_policy_lag": 1,
            "actor.fetch.host_cache": no_cache,
            "estimator.fetch.host_cache": no_cache,
        },
    )
    followers = ("actor-0", "actor-1", "estimator-0")
    system.start("learner", *followers, "actor-2")

    def on(name: str) -> float:
        return system[name].value(f"gpo_{name.split('-')[0]}_policy_version")

    wait(lambda: all(on(f) >= 1 for f in (*followers, "actor-2")), 120, "version 1", system)
    system.retire("actor-2").stop()
    gone_at = updates(system)
    wait(lambda: updates(system) >= gone_at + 3, 60, "three versions while it is down", system)
    system["learner"].signal(signal.SIGSTOP)  # no new version for a moment
    newest = max(u["version"] for u in pipeline.updates(system.config))
    wait(lambda: all(on(f) == newest for f in followers), 30, "live followers on it", system)
    ((_, fields),) = r.xrevrange(pipeline.KEYS.stream(WEIGHTS), count=1)
    named = decode(fields[FIELD]).chunk_keys[0]  # an unchanged chunk keeps an older key
    chunk = r.get(named)
    r.set(named, bytes([chunk[0] ^ 0xFF]) + chunk[1:])
    system.start("actor-2")
    late = system["actor-2"]
    wait(lambda: late.value("gpo_actor_adapter_rejected_total") >= 1, 30, "rejected", system)
    assert 'reason="sha256_mismatch"' in late.metrics_text()
    time.sleep(2)
    assert on("actor-2") == 0 and late.value("gpo_actor_trajectories_total") == 0  # it lags
    system["learner"].signal(signal.SIGCONT)
    wait(lambda: on("actor-2") > newest, 60, "the late actor catching up", system)
    wait(lambda: late.value("gpo_actor_trajectories_total") > 0, 60, "it serves again", system)
    loaded = [int(m[1]) for x in late.lines if (m := re.search(r"loaded adapter version (\d+)", x))]
    assert loaded and min(loaded) > newest, loaded  # none of the versions it missed
    stop_cleanly(system)
    check_books(r, system)


# 17 ------------------------------------------------------------------------------------


def test_17_scale_out_and_in_mid_run(redis_server, make_system):
    r = redis_server.client()
    system = make_system(
        redis_server.url, {"redis.claim_idle": 3.0, "redis.pending_check_interval": 0.5}
    )
    system.start("learner", "estimator-0", "actor-0")
    wait(lambda: updates(system) >= 1, 120, "update 1", system)
    # out: a second actor and a second estimator get work within seconds of starting
    system.start("actor-1", "estimator-1")
    started = time.monotonic()
    wait(lambda: system["actor-1"].value("gpo_actor_trajectories_total") > 0, 10, "a1", system)
    wait(lambda: system["estimator-1"].value("gpo_estimator_samples_total") > 0, 10, "e1", system)
    assert time.monotonic() - started < 10
    # in: the first ones stop mid-run (SIGTERM, as a scheduler does); whatever they still
    # held is taken over by the others
    for name in ("actor-0", "estimator-0"):
        assert system.retire(name).stop(30) == 0, name
    left = {s: pipeline.pending(r, s, c) for s, c in ((PROMPTS, "actor-0"), (RESETS, "actor-0"))}
    left[TRAJECTORIES] = pipeline.pending(r, TRAJECTORIES, "estimator-0")
    done = updates(system)
    wait(lambda: updates(system) >= done + 3, 60, "three more updates", system)
    for stream, consumer in (
        (PROMPTS, "actor-0"),
        (RESETS, "actor-0"),
        (TRAJECTORIES, "estimator-0"),
    ):
        assert pipeline.pending(r, stream, consumer) == [], (stream, left)
    stop_cleanly(system)
    check_books(r, system)


# 18 ------------------------------------------------------------------------------------


def test_18_kill9_learner_between_step_and_ack_nothing_twice_nothing_lost(
    redis_server, make_system
):
    """Updates 4 and 5 are trained, published and not yet checkpointed (every 3 updates)
    when the learner is killed; their samples, held unacked while the learner's consumer
    re-scans its pending list every 0.2 s, must come back and be trained once."""
    r = redis_server.client()
    system = make_system(
        redis_server.url,
        {
            "learner.checkpoint_every": 3,
            "redis.pending_check_interval": 0.2,
            "redis.max_deliveries": 2,
        },
    )
    system.start("estimator-0", "actor-0")
    system.start("learner", env={"GPO_LEARNER_FAULT": "after_step:5"})
    doomed = system.retire("learner")
    assert doomed.proc.wait(180) == -signal.SIGKILL, doomed.lines[-30:]
    held = pipeline.pending(r, SAMPLES, "learner")
    assert len(held) >= 2 * 4  # the samples of the two uncommitted updates
    version = max(u["version"] for u in pipeline.updates(system.config))
    system.start("learner")
    wait(lambda: updates(system) >= 5 + 3, 90, "three more updates", system)
    wait(lambda: not set(held) & set(pipeline.pending(r, SAMPLES)), 30, "held ones acked", system)
    # the restart republished its checkpoint above every version followers may hold
    newest = max(u["version"] for u in pipeline.updates(system.config))
    assert newest > version + 1
    stop_cleanly(system)
    check_books(r, system)


@pytest.mark.slow
def test_18_kill9_learner_after_four_uncommitted_publishes_no_sample_turns_stale(
    redis_server, make_system
):
    """Max policy lag 4, a checkpoint every 5 updates, and the learner killed right after
    publishing update 9: versions 6..9 are rolled back, and the restart publishes version 10
    holding step 5. Lag is counted in steps along the lineage (learner/lineage.py), so the
    restart turns no pending sample stale: counted in versions, the samples of versions
    1..5 were 5..9 behind version 10 and dropped as stale at the restart, acked, lost.

    After the restart the rule is the one of a run without a crash: a sample trained more
    than 4 updates after the weights that generated it is dropped, by design, and its
    run-log record gives its lag. On this machine, alone, every sample held at the kill is
    trained exactly once; under a loaded machine the queues deepen, and a held sample may
    age past 4 updates after the restart as it would have without one. So the test asserts
    what the restart controls: no held sample is judged stale at the restart's step (5,
    before the first update after it), every acked sample left untrained was dropped at a
    recorded lag of more than 4 steps, and none is trained twice."""
    r = redis_server.client()
    system = make_system(
        redis_server.url,
        {
            "learner.max_policy_lag": 4,
            "learner.checkpoint_every": 5,
            "learner.read_ahead": 8,
            "actor.max_policy_lag": 1,
            "redis.backlog_limits": {"samples": 24},
            "redis.pending_check_interval": 0.2,
        },
    )
    system.start("estimator-0", "actor-0")
    system.start("learner", env={"GPO_LEARNER_FAULT": "after_publish:9"})
    doomed = system.retire("learner")
    assert doomed.proc.wait(300) == -signal.SIGKILL, doomed.lines[-30:]
    held = {m.id: m.policy_version for m in pipeline.held(r, "learner", (SAMPLES,))[SAMPLES]}
    assert len(held) >= 4 * 4, held  # at least the samples of the four uncommitted updates
    assert min(held.values()) <= 5, held  # some a version-count restart would call stale
    system.start("learner")
    wait(lambda: updates(system) >= 9 + 5, 180, "five more updates", system)
    # each held sample trained, or dropped stale (after the restart, at a recorded lag)
    wait(lambda: not unsettled(system, held.keys() - stale_ids(system)), 60, "held", system)
    stop_cleanly(system)
    log = pipeline.run_log(system.config)
    restart = max(i for i, e in enumerate(log) if e["event"] == "resume")
    assert log[restart]["step"] == 5
    stale = [e for e in log[restart:] if e["event"] == "stale"]
    at_restart = {i for e in stale if e["step"] == 5 for i in e["sample_ids"]}
    assert not held.keys() & at_restart, {i: held[i] for i in held.keys() & at_restart}
    log = pipeline.run_log(system.config)
    stale = [e for e in log if e["event"] == "stale"]
    assert all(lag > 4 for e in stale for lag in e["lags"]), stale
    books = pipeline.books(r, system.config)  # acked untrained: each one stale, above
    assert books.lost == 0, {s: h.lost for s, h in books.hops.items() if h.lost}
    assert books.trained_twice == {} and books.trained_unknown == set() and books.dead_sources == {}


def stale_ids(system: System) -> set[str]:
    """Sample ids the learner dropped as stale so far (its run log)."""
    return {
        i for e in pipeline.run_log(system.config) if e["event"] == "stale" for i in e["sample_ids"]
    }


def unsettled(system: System, ids) -> set[str]:
    """The ids the learner has neither trained (in its weights) nor dropped as surplus
    resets of its batch composition (by design)."""
    return set(ids) - pipeline.settled(system.config)
