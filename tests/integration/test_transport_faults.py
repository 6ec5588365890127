"""RELIABILITY.md fault tests at the transport layer: real redis-server, real worker
processes (tests/support/worker.py), real signals. Each asserts on the work (lost,
processed twice), the dead stream or the counters, so none passes with the behaviour gone.

Numbers refer to RELIABILITY.md's list.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import msgpack
import pytest

from protocol.codec import encode
from protocol.consumer import FIELD
from protocol.streams import Keys
from tests.support.waits import poll
from tests.support.workload import ROOT, Worker, Workload, prompt

KEYS = Keys("t")


def owner_pending(r, consumer: str) -> int:
    try:
        rows = r.xpending_range(KEYS.stream("in"), "workers", "-", "+", 1000, consumername=consumer)
    except Exception:  # noqa: BLE001 - group not created yet
        return 0
    return len(rows)


def assert_clean(work: Workload, allow_dup_ids: set[str] = frozenset()):
    rep = work.report()
    assert rep.lost == set(), f"lost: {sorted(rep.lost)[:10]}"
    unexpected_twice = set(rep.twice) - set(allow_dup_ids)
    assert not unexpected_twice, f"processed twice: {sorted(unexpected_twice)[:10]}"
    return rep


# 1 -------------------------------------------------------------------------------------


def test_01_kill9_worker_holding_five_unacked(redis_server):
    r = redis_server.client()
    work = Workload(r)
    a = Worker(redis_server.url, "a", "--hold", "60", "--batch", "5", "--claim-idle", "1.5")
    work.produce(5)
    assert poll(lambda: owner_pending(r, "a") == 5, 10)
    a.kill9()
    b = Worker(redis_server.url, "b", "--claim-idle", "1.5")
    assert work.wait_processed(work.produced, 20)
    assert b.metric("gpo_worker_messages_redelivered_total") >= 5
    b.stop()
    assert_clean(work)
    assert work.pending() == 0


# 2 -------------------------------------------------------------------------------------


def test_02_sigterm_mid_batch_exits_zero_and_loses_nothing(redis_server):
    r = redis_server.client()
    work = Workload(r)
    work.produce(20)
    a = Worker(redis_server.url, "a", "--hold", "0.3", "--batch", "10", "--claim-idle", "1.5")
    assert poll(lambda: len(work.processed()) >= 3, 20)
    t0 = time.monotonic()
    assert a.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 10
    assert len(work.processed()) < 20, "the worker finished before the signal: test proves nothing"
    b = Worker(redis_server.url, "b", "--claim-idle", "1.5")
    assert work.wait_processed(work.produced, 30)
    assert poll(lambda: work.pending() == 0, 10), "work left pending"
    b.stop()
    assert_clean(work)


# 3 -------------------------------------------------------------------------------------


def test_03_restarted_consumer_drains_own_pending_first(redis_server):
    r = redis_server.client()
    work = Workload(r)
    work.produce(3)
    a = Worker(redis_server.url, "a", "--hold", "60", "--batch", "3", "--claim-idle", "600")
    assert poll(lambda: owner_pending(r, "a") == 3, 10)
    a.kill9()
    work.produce(3)
    # claim_idle is 10 minutes: only draining its own pending list can get p0..p2 done.
    a2 = Worker(redis_server.url, "a", "--claim-idle", "600", "--batch", "3")
    assert work.wait_processed(work.produced, 15)
    a2.stop()
    order = [k for k in work.processed()]
    assert order[:3] == ["p0", "p1", "p2"], order
    assert_clean(work)


# 4 -------------------------------------------------------------------------------------


def _raw_redis_commands(port: int, *commands: list[bytes]) -> socket.socket:
    """Send commands on a raw socket without reading replies (a client whose replies are lost)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    out = b""
    for cmd in commands:
        out += b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in cmd)
    s.sendall(out)
    return s


def test_04_sigstop_redis_during_read_hidden_pending_recovered(redis_server):
    r = redis_server.client()
    work = Workload(r)
    a = Worker(
        redis_server.url,
        "a",
        "--socket-timeout",
        "2",
        "--block-ms",
        "500",
        "--pending-check",
        "0.5",
        "--claim-idle",
        "600",
    )
    work.produce(2)
    assert work.wait_processed(work.produced, 10)
    redis_server.pause()
    # While Redis is frozen: new entries arrive, and a read for consumer `a` whose reply is
    # lost (what a retried XREADGROUP leaves behind) takes them into a's pending list.
    msgs = [prompt(i) for i in (2, 3, 4)]
    work.produced += [m.id for m in msgs]
    cmds = [[b"XADD", KEYS.stream("in").encode(), b"*", FIELD, encode(m)] for m in msgs]
    cmds.append([b"INCRBY", KEYS.produced("in").encode(), b"3"])
    cmds.append(
        [
            b"XREADGROUP",
            b"GROUP",
            b"workers",
            b"a",
            b"COUNT",
            b"10",
            b"STREAMS",
            KEYS.stream("in").encode(),
            b">",
        ]
    )
    sock = _raw_redis_commands(redis_server.port, *cmds)
    time.sleep(3)  # past the worker's socket timeout: its blocked read fails and it reconnects
    redis_server.resume()
    assert poll(lambda: owner_pending(r, "a") == 0 or len(work.processed()) == 5, 5)
    sock.close()
    # claim_idle is 10 minutes: only the periodic re-read of a's own pending list finds them.
    assert work.wait_processed(work.produced, 20)
    assert a.metric("gpo_worker_messages_redelivered_total") >= 3
    assert a.proc.poll() is None
    a.stop()
    assert_clean(work)


# 5 -------------------------------------------------------------------------------------


def test_05_sigstop_redis_during_xadd_duplicate_trained_once(redis_server):
    """A producer whose XADD times out while Redis is frozen retries after reconnecting;
    Redis then runs both: two entries, one message id. Dedup by id trains it once."""
    r = redis_server.client()
    work = Workload(r)
    code = f"""
import asyncio, sys
sys.path.insert(0, {str(ROOT)!r})
from protocol.config import RedisConfig
from protocol.metrics import Metrics, TransportMetrics
from protocol.producer import Producer
from protocol.streams import Keys, Link
from tests.support.workload import prompt
async def main():
    cfg = RedisConfig(url={redis_server.url!r}, run_id="t", socket_timeout=1.5, block_ms=200,
                      reconnect_backoff_max=0.5)
    tm = TransportMetrics(Metrics("p"))
    link = Link(cfg, tm)
    await link.connect()
    producer = Producer(link, Keys("t"), cfg, tm)
    await producer.send("in", prompt(99), wait=False)  # warm: connected, the stream made
    print("go", flush=True)
    sys.stdin.readline()
    await producer.send("in", prompt(0), wait=False)
    print("sent", int(tm.reconnects._value.get()), flush=True)
asyncio.run(main())
"""
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "go"
    redis_server.pause()
    p.stdin.write("\n")
    p.stdin.flush()
    time.sleep(2.5)  # the XADD times out, the producer reconnects and resends (queued)
    redis_server.resume()
    line = p.stdout.readline().split()
    p.wait(10)
    assert line[0] == "sent" and int(line[1]) >= 1
    work.produced += ["p99", "p0"]
    assert poll(lambda: r.xlen(KEYS.stream("in")) == 3, 5), "expected the retried XADD to duplicate"
    w = Worker(redis_server.url, "w")
    assert work.wait_processed(["p0"], 10)
    time.sleep(0.5)
    w.stop()
    rep = assert_clean(work, allow_dup_ids={"p0"})
    assert rep.processed["p0"] == 2  # both entries were handled ...
    assert set(rep.processed) == {"p0", "p99"}  # ... and dedup by message id trains it once


# 6, 7, 20 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_06_20_kill9_redis_with_aof_restores_everything(redis_aof, loop):
    r = redis_aof.client()
    work = Workload(r)
    work.produce(20)
    w = Worker(redis_aof.url, "w", "--loop", loop, "--socket-timeout", "2", "--block-ms", "500")
    assert work.wait_processed(work.produced, 15)
    work.produce(3)
    held = Worker(
        redis_aof.url, "h", "--hold", "600", "--batch", "3", "--claim-idle", "600", "--loop", loop
    )
    assert poll(lambda: owner_pending(r, "h") + len(work.processed()) >= 23, 10)
    time.sleep(1.5)  # appendfsync everysec
    before = work.processed()
    pending_before = owner_pending(r, "h")
    redis_aof.kill9()
    time.sleep(1)
    redis_aof.restart()
    r = work.r = redis_aof.client()
    assert set(work.processed()) >= set(before), "acknowledged work lost"
    assert owner_pending(r, "h") == pending_before, "pending list not restored"
    assert r.xinfo_groups(KEYS.stream("in"))[0]["name"] == b"workers"
    held.kill9()
    work.produce(5)
    assert work.wait_processed(work.produced[-5:], 20), "worker did not reconnect by itself"
    assert w.proc.poll() is None
    assert w.metric("gpo_worker_redis_reconnects_total") >= 1
    w.stop()
    assert_clean(work)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_07_20_redis_restart_without_persistence_recreates_groups(redis_server, loop):
    work = Workload(redis_server.client())
    w = Worker(redis_server.url, "w", "--loop", loop, "--socket-timeout", "2", "--block-ms", "500")
    work.produce(5)
    assert work.wait_processed(work.produced, 10)
    redis_server.restart()  # kill -9, no AOF: streams and groups are gone
    work.r = redis_server.client()
    work.produced.clear()
    work.produce(5)
    assert work.wait_processed(work.produced, 20), "worker did not recover"
    assert w.metric("gpo_worker_group_resets_total") >= 1
    assert w.proc.poll() is None
    w.stop()
    assert_clean(work)


# 8 -------------------------------------------------------------------------------------


def test_08_redis_paused_10s_nobody_exits_throughput_recovers(redis_server):
    work = Workload(redis_server.client())
    w = Worker(redis_server.url, "w", "--socket-timeout", "2", "--block-ms", "500")
    work.produce(5)
    assert work.wait_processed(work.produced, 10)
    redis_server.pause()
    time.sleep(10)
    assert w.proc.poll() is None
    redis_server.resume()
    t0 = time.monotonic()
    work.produce(50)
    assert work.wait_processed(work.produced, 15)
    assert time.monotonic() - t0 < 15
    assert w.metric("gpo_worker_redis_reconnects_total") >= 1  # calls timed out instead of hanging
    w.stop()
    assert_clean(work)


# 10 ------------------------------------------------------------------------------------


def test_10_poison_message_dead_lettered_once_after_max_deliveries(redis_server):
    r = redis_server.client()
    work = Workload(r)
    work.produce(5)
    work.produce(1, text="POISON pill")
    work.produce(5)
    w = Worker(redis_server.url, "w", "--max-deliveries", "3", "--pending-check", "0.2")
    assert work.wait_processed([i for i in work.produced if i != "p5"], 10)
    assert poll(lambda: len(work.dead()) >= 1, 15)
    time.sleep(1)
    dead = work.dead()
    assert len(dead) == 1
    assert b"max_deliveries" in dead[0]["reason"] and b"poison message p5" in dead[0]["reason"]
    assert work.pending() == 0  # acked at the source
    assert w.metric("gpo_worker_messages_dead_lettered_total") == 1
    assert w.metric("gpo_worker_handler_errors_total") == 3
    work.produce(3)
    assert work.wait_processed(work.produced[-3:], 10)  # others keep flowing
    w.stop()
    assert_clean(work)


# 11 ------------------------------------------------------------------------------------


HOSTILE = {
    "truncated": encode(prompt(0))[:-7],
    "huge_array_header": b"\xdd\xff\xff\xff\xff",
    "deep_nesting": b"\x91" * 5000,
    "oversized_bin": b"\xc6\x7f\xff\xff\xff" + b"x" * 100,
    "int_map_keys": b"\x81\x01\x02",
    "bad_utf8": b"\x81\xa1v\xa2\xff\xfe",
    "ext_type": b"\xd4\x05\x00",
    "unknown_version": msgpack.packb({**msgpack.unpackb(encode(prompt(0))), "v": 99}),
    "unknown_type": encode(prompt(0)).replace(b"\xa6prompt", b"\xa6bogus!"),
    "pickle": b"\x80\x04\x95\x1c\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.",
}


def test_11_hostile_payloads_dead_lettered_with_reason(redis_server, tmp_path):
    r = redis_server.client()
    work = Workload(r)
    w = Worker(redis_server.url, "w")
    for raw in HOSTILE.values():
        work.inject(raw)
    work.produce(3)
    assert work.wait_processed(work.produced, 10)
    assert poll(lambda: len(work.dead()) == len(HOSTILE), 10)
    dead = work.dead()
    assert {d["raw"] for d in dead} == set(HOSTILE.values())
    assert all(d["reason"].startswith(b"decode:") for d in dead)
    assert work.pending() == 0
    assert w.proc.poll() is None
    w.stop()
    assert_clean(work)


# 12 ------------------------------------------------------------------------------------


def test_12_slow_heartbeating_owner_keeps_message_until_killed(redis_server):
    r = redis_server.client()
    work = Workload(r)
    work.produce(1)
    slow = Worker(
        redis_server.url,
        "slow",
        "--hold",
        "5",
        "--heartbeat",
        "--claim-idle",
        "1",
        "--pending-check",
        "0.2",
    )
    assert poll(lambda: owner_pending(r, "slow") == 1, 5)
    other = Worker(redis_server.url, "other", "--claim-idle", "1", "--pending-check", "0.2")
    assert work.wait_processed(["p0"], 15)
    rep = assert_clean(work)
    assert rep.processed["p0"] == 1
    out = r.xrange(KEYS.stream("out"))
    from protocol.codec import decode

    assert decode(out[0][1][FIELD]).text.startswith(
        "slow:"
    )  # the owner kept it (5 s > 1 s claim_idle)
    slow.stop()
    # now a slow owner that dies: the other worker takes the message over
    slow2 = Worker(redis_server.url, "slow2", "--hold", "600", "--heartbeat", "--claim-idle", "1")
    work.produce(1)
    assert poll(lambda: owner_pending(r, "slow2") == 1 or "p1" in work.processed(), 5)
    if owner_pending(r, "slow2") == 1:
        slow2.kill9()
    assert work.wait_processed(["p1"], 15)
    other.stop()
    slow2.stop()
    assert_clean(work)


# 13 ------------------------------------------------------------------------------------


def test_13_zombie_consumer_late_output_dropped(redis_server):
    r = redis_server.client()
    work = Workload(r)
    work.produce(1)
    zombie = Worker(
        redis_server.url, "zombie", "--hold", "3", "--claim-idle", "1", "--pending-check", "0.2"
    )
    assert poll(lambda: owner_pending(r, "zombie") == 1, 5)
    zombie.signal(signal.SIGSTOP)
    other = Worker(redis_server.url, "other", "--claim-idle", "1", "--pending-check", "0.2")
    assert work.wait_processed(["p0"], 15)
    zombie.signal(signal.SIGCONT)
    time.sleep(4)  # the zombie wakes, finishes its hold, finds it lost the lease
    rep = assert_clean(work)
    assert rep.processed["p0"] == 1
    assert zombie.proc.poll() is None
    zombie.stop()
    other.stop()
    assert work.pending() == 0


# 14 ------------------------------------------------------------------------------------


def test_14_fast_producer_never_trims_undelivered(redis_server):
    import asyncio

    from protocol.config import RedisConfig
    from protocol.metrics import Metrics, TransportMetrics
    from protocol.producer import Producer
    from protocol.streams import Link

    r = redis_server.client()
    work = Workload(r)
    w = Worker(redis_server.url, "w", "--hold", "0.01", "--batch", "8", "--trim-every", "0.3")
    max_backlog = 0
    limit = 40

    async def produce():
        nonlocal max_backlog
        cfg = RedisConfig(
            url=redis_server.url, run_id="t", backlog_limit=limit, block_ms=200, socket_timeout=3
        )
        tm = TransportMetrics(Metrics("p"))
        link = Link(cfg, tm)
        prod = Producer(link, KEYS, cfg, tm)
        for i in range(300):
            await prod.send("in", prompt(i))
            max_backlog = max(max_backlog, await prod.backlog("in"))
        waited = tm.backpressure_seconds.labels("in")._value.get()
        await link.close()
        return waited

    waited = asyncio.run(produce())
    work.produced = [f"p{i}" for i in range(300)]
    assert waited > 0, "producer never waited: no backpressure"
    assert max_backlog <= limit + 1
    assert work.wait_processed(work.produced, 60)
    time.sleep(0.6)
    assert r.xlen(KEYS.stream("in")) < 300, "nothing was trimmed: the test proves nothing"
    w.stop()
    assert_clean(work)


def test_14_a_batch_larger_than_the_room_goes_in_chunks_below_the_limit(redis_server):
    """One send of 25 messages with a limit of 10 (an estimator publishing a trajectory's
    sample and its reused resets): every XADD fits below the limit as read from Redis just
    before it, and all 25 arrive in order. It used to go out whole once the backlog was
    below the limit (a system test saw 19 samples against a limit of 8)."""
    import asyncio

    from protocol.config import RedisConfig
    from protocol.metrics import Metrics, TransportMetrics
    from protocol.producer import Producer
    from protocol.streams import Link

    r = redis_server.client()
    work = Workload(r)
    w = Worker(redis_server.url, "w", "--hold", "0.02", "--batch", "4")
    limit, chunks = 10, []

    async def produce():
        cfg = RedisConfig(
            url=redis_server.url, run_id="t", backlog_limit=limit, block_ms=200, socket_timeout=3
        )
        tm = TransportMetrics(Metrics("p"))
        link = Link(cfg, tm)
        prod = Producer(link, KEYS, cfg, tm)
        send_raw = prod.send_raw

        async def recorded(stream, payloads):
            before = ledger_backlog()
            chunks.append((before, len(payloads)))
            return await send_raw(stream, payloads)

        prod.send_raw = recorded
        ids = await prod.send("in", [prompt(i) for i in range(25)])
        await link.close()
        return ids

    def ledger_backlog() -> int:
        produced, acked = r.mget(KEYS.produced("in"), KEYS.acked("in"))
        return int(produced or 0) - int(acked or 0)

    ids = asyncio.run(produce())
    work.produced = [f"p{i}" for i in range(25)]
    assert len(ids) == 25 and ids == sorted(ids, key=lambda e: tuple(map(int, e.split("-"))))
    assert len(chunks) >= 3, chunks
    assert all(before + n <= limit for before, n in chunks), chunks
    assert work.wait_processed(work.produced, 30)
    w.stop()
    assert_clean(work)


# 19 ------------------------------------------------------------------------------------


def test_19_idle_reads_return_empty_without_timeouts(redis_server):
    idle = float(os.environ.get("GPO_IDLE_TEST_SECONDS", "60"))
    work = Workload(redis_server.client())
    w = Worker(redis_server.url, "w", "--block-ms", "2000", "--socket-timeout", "3")
    time.sleep(idle)
    assert w.proc.poll() is None
    assert w.metric("gpo_worker_redis_reconnects_total") == 0
    work.produce(2)
    assert work.wait_processed(work.produced, 10)
    w.stop()
    err = w.proc.stderr.read()
    assert "Timeout" not in err and "Traceback" not in err, err[-2000:]


# 21 ------------------------------------------------------------------------------------


def test_21_tls_and_password(redis_tls):
    work = Workload(redis_tls.client())
    w = Worker(redis_tls.url, "w", "--tls-ca", str(redis_tls.tls.ca))
    work.produce(5)
    assert work.wait_processed(work.produced, 10)
    w.stop()
    assert_clean(work)

    wrong = redis_tls.url.replace("s3cret-pw", "wrong")
    t0 = time.monotonic()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.worker",
            "--url",
            wrong,
            "--name",
            "x",
            "--tls-ca",
            str(redis_tls.tls.ca),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert time.monotonic() - t0 < 10, "a wrong password must fail fast"
    assert p.returncode == 2
    assert "refused the credentials" in p.stdout or "password" in p.stdout.lower(), p.stdout
    assert "wrong" not in p.stdout  # the password is redacted
    assert "Traceback" not in p.stderr


def test_21_acl_user_in_url(tmp_path):
    from ops.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", username="gpo-worker", password="w0rker-pw").start()
    try:
        assert server.url.startswith("redis://gpo-worker:w0rker-pw@")
        import redis

        with pytest.raises(redis.RedisError, match="(?i)auth"):  # the default user is off
            redis.Redis(host="127.0.0.1", port=server.port, protocol=2).ping()
        work = Workload(server.client())
        w = Worker(server.url, "w")
        work.produce(3)
        assert work.wait_processed(work.produced, 10)
        w.stop()
        assert_clean(work)
    finally:
        server.stop()
