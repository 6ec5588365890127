"""The system on a 3-primary Redis Cluster on loopback (issue 8, item 4).

Only the URL differs (`redis+cluster://host:port`): learner, actor and estimator train on
the tiny model, poison messages reach the dead-letter streams, and old adapter versions are
deleted though their chunks live on different nodes. The key layout puts each work stream
in its own slot, with its dead-letter stream and counters beside it (one hash tag).
"""

from __future__ import annotations

import pytest

from ops.redis_cluster import LocalCluster
from protocol.codec import decode
from protocol.consumer import FIELD
from protocol.streams import PROMPTS, TRAJECTORIES, WEIGHTS, WORK_STREAMS
from tests.integration.test_redis_memory import check_trim
from tests.integration.test_transport_faults import HOSTILE
from tests.support import pipeline
from tests.support.pipeline import KEYS


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(tmp_path / "cluster").start()
    yield c
    c.stop()


def test_streams_spread_over_slots_each_beside_its_dead_letters(cluster):
    node = cluster.nodes[0].client()

    def slot(key: str) -> int:
        return int(node.execute_command("CLUSTER KEYSLOT", key))

    streams = [*WORK_STREAMS, WEIGHTS]
    slots = {s: slot(KEYS.stream(s)) for s in streams}
    assert len(set(slots.values())) == len(streams), slots  # one slot per stream
    for s in WORK_STREAMS:
        assert slot(KEYS.dead(s)) == slot(KEYS.produced(s)) == slot(KEYS.acked(s)) == slots[s]
    nodes = {cluster.node_of(KEYS.stream(s)) for s in streams}
    assert len(nodes) >= 2, nodes  # the work is not all on one primary


def test_trimming_keeps_pending_and_undelivered_entries_on_a_cluster(cluster):
    check_trim(cluster.url, cluster.client())


@pytest.mark.slow
def test_pipeline_trains_and_dead_letters_on_a_cluster(cluster, tiny_model_dir, tmp_path):
    r = cluster.client()
    config = pipeline.write_config(tmp_path, tiny_model_dir)
    # keep one adapter version: older ones must be deleted wherever their chunks live
    procs = pipeline.start(config, cluster.url, "--set", "learner.adapter_keep=1")
    poison = [HOSTILE["truncated"], HOSTILE["pickle"]]
    try:
        pipeline.wait_until(lambda: len(pipeline.updates(config)) >= 1, 300, "update 1", procs)
        for stream in (PROMPTS, TRAJECTORIES):
            for raw in poison:
                r.incrby(KEYS.produced(stream), 1)
                r.xadd(KEYS.stream(stream), {FIELD: raw})
        pipeline.wait_until(
            lambda: all(r.xlen(KEYS.dead(s)) >= len(poison) for s in (PROMPTS, TRAJECTORIES)),
            60,
            "dead letters",
            procs,
        )
        pipeline.wait_until(lambda: len(pipeline.updates(config)) >= 3, 300, "3 updates", procs)
    finally:
        codes = pipeline.stop_all(procs)
    assert codes == {"learner": 0, "actor": 0, "estimator": 0}, codes
    for role, p in procs.items():
        assert not any("Traceback" in line for line in p.lines), (role, p.lines[-30:])

    for stream in (PROMPTS, TRAJECTORIES):
        dead = [f for _, f in r.xrange(KEYS.dead(stream))]
        assert sorted(f[b"raw"] for f in dead) == sorted(poison)
        assert all(f[b"reason"].startswith(b"decode:") for f in dead)
    books = pipeline.books(r, config)
    assert books.lost == 0, {s: h.lost for s, h in books.hops.items() if h.lost}

    # adapter cleanup without SCAN: only the chunks the newest version names are left, on any
    # node (a chunk unchanged since an older version is named under that version's key)
    newest = pipeline.updates(config)[-1]["version"]
    ((_, fields),) = r.xrevrange(KEYS.stream(WEIGHTS), count=1)
    pointer = decode(fields[FIELD])
    assert pointer.version == newest
    named = set(pointer.chunk_keys)
    indexed = {k.decode() for k in r.zrange(KEYS.adapter_index(), 0, -1)}
    assert indexed == named
    for version in range(1, newest):
        key = KEYS.adapter_chunk(version, 0)
        assert r.exists(key) == (key in named), version


def test_cluster_url_mistakes_fail_fast_with_a_clear_message(redis_server):
    import asyncio

    from ops.redis_server import free_port
    from protocol.config import RedisConfig
    from protocol.streams import Link, RedisFatalError

    async def connect(url: str) -> str:
        link = Link(RedisConfig(url=url, block_ms=300, socket_timeout=3))
        try:
            await link.connect()
        except RedisFatalError as e:
            return str(e)
        finally:
            await link.close()
        return "connected"

    port = redis_server.port
    assert "is not a Redis Cluster node" in asyncio.run(
        connect(f"redis+cluster://127.0.0.1:{port}/0")
    )
    unreachable = asyncio.run(connect(f"redis+cluster://127.0.0.1:{free_port()}/0"))
    assert unreachable.startswith("cannot reach Redis at redis+cluster://")
