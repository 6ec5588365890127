"""An ACL user per role over TLS (issue 8, item 3), with the shipped `ops/redis/users.acl`.

redis-server speaks only TLS and loads the shipped ACL file (password hashes filled in, as
ops/redis/README.md tells an operator to). Learner, actor and estimator each log in as their
own user, `rediss://gpo-<role>:<password>@...` with `[redis] tls_ca_file`, and train: the
rules allow everything the processes do. Then each role is refused writes outside its keys,
and the consumer commands on streams it only produces (ops/redis/README.md).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import redis

from ops.redis_server import RedisServer, free_port, make_tls_files
from protocol.streams import (
    GROUP_ESTIMATORS,
    GROUP_LEARNER,
    PROMPTS,
    RESETS,
    SAMPLES,
    TRAJECTORIES,
    WEIGHTS,
)
from tests.support import pipeline
from tests.support.pipeline import KEYS
from tests.support.workload import ROOT

ROLES = ("admin", "actor", "estimator", "learner")
PASSWORDS = {role: f"{role}-Pw-{i}x" for i, role in enumerate(ROLES)}


def render_acl(target: Path) -> Path:
    """The shipped ACL file with each `#SHA256_OF_<ROLE>_PASSWORD` placeholder replaced by
    the sha256 of that role's password (Redis refuses to start while a placeholder is left)."""
    text = (ROOT / "ops" / "redis" / "users.acl").read_text()
    for role, password in PASSWORDS.items():
        digest = hashlib.sha256(password.encode()).hexdigest()
        text = text.replace(f"#SHA256_OF_{role.upper()}_PASSWORD", f"#{digest}")
    target.write_text(text)
    return target


@pytest.fixture
def redis_acl_tls(tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    acl = render_acl(tmp_path / "users.acl")
    server = RedisServer(
        tmp_path / "redis", tls=tls, aclfile=acl, username="gpo-admin", password=PASSWORDS["admin"]
    ).start()
    yield server
    server.stop()


def role_url(server: RedisServer, role: str) -> str:
    return f"rediss://gpo-{role}:{PASSWORDS[role]}@127.0.0.1:{server.port}/0"


def role_client(server: RedisServer, role: str) -> redis.Redis:
    return redis.Redis.from_url(
        role_url(server, role), protocol=2, ssl_ca_certs=str(server.tls.ca), socket_timeout=5
    )


def test_shipped_acl_file_refuses_to_load_with_placeholders(tmp_path):
    server = RedisServer(tmp_path / "redis", aclfile=ROOT / "ops" / "redis" / "users.acl")
    with pytest.raises(RuntimeError, match="ACL"):
        server.start()
    server.stop()


@pytest.mark.slow
def test_pipeline_runs_with_a_user_per_role_over_tls(redis_acl_tls, tiny_model_dir, tmp_path):
    server = redis_acl_tls
    config = pipeline.write_config(
        tmp_path, tiny_model_dir, redis_extra=f'tls_ca_file = "{server.tls.ca}"'
    )
    urls = {role: role_url(server, role) for role in ("learner", "actor", "estimator")}
    port = free_port()
    procs = pipeline.start(config, urls, ports={"actor": port})
    try:
        pipeline.wait_until(lambda: len(pipeline.updates(config)) >= 2, 300, "2 updates", procs)
        # the actor follows the learner's adapters (reads weights and chunks as gpo-actor)
        pipeline.wait_until(
            lambda: procs["actor"].metric(port, "gpo_actor_policy_version") >= 1,
            60,
            "actor on a published version",
            procs,
        )
    finally:
        codes = pipeline.stop_all(procs)
    assert codes == {"learner": 0, "actor": 0, "estimator": 0}, codes
    for role, p in procs.items():
        text = "\n".join(p.lines)
        assert "NOPERM" not in text and "Traceback" not in text, (role, p.lines[-30:])
    admin = server.client()
    books = pipeline.books(admin, config)
    assert (books.lost, books.trained_twice, books.trained_unknown) == (0, {}, set()), books

    # the default user is off: no anonymous access, even over TLS
    anonymous = redis.Redis(
        host="127.0.0.1", port=server.port, ssl=True, ssl_ca_certs=str(server.tls.ca), protocol=2
    )
    with pytest.raises(redis.RedisError, match="(?i)auth"):
        anonymous.xlen(KEYS.stream(SAMPLES))

    # each role is refused writes outside its keys (and commands it does not need)
    traj = KEYS.stream(TRAJECTORIES)
    refused = {
        "actor": [
            ("XADD", KEYS.stream(SAMPLES), "*", "m", "x"),  # samples come from estimators
            ("XADD", KEYS.stream(PROMPTS), "*", "m", "x"),  # it consumes prompts, not makes them
            ("SET", KEYS.adapter_chunk(99, 0), "x"),  # adapters come from the learner
            ("XADD", KEYS.stream(WEIGHTS), "*", "m", "x"),
            # it writes trajectories, but may not read, ack or trim them as the estimators
            ("XREADGROUP", "GROUP", GROUP_ESTIMATORS, "x", "STREAMS", traj, ">"),
            ("XACK", traj, GROUP_ESTIMATORS, "0-1"),
            ("XTRIM", traj, "MINID", "0-1"),
            # each counter is its writer's: prompts' produced is the learner's, trajectories'
            # acked the estimators'
            ("INCRBY", KEYS.produced(PROMPTS), "1"),
            ("INCRBY", KEYS.acked(TRAJECTORIES), "1"),
        ],
        "estimator": [
            ("XADD", KEYS.stream(PROMPTS), "*", "m", "x"),
            ("XADD", KEYS.stream(TRAJECTORIES), "*", "m", "x"),
            ("SET", KEYS.adapter_chunk(99, 0), "x"),
            ("DEL", KEYS.stream(SAMPLES)),
            ("XACK", KEYS.stream(SAMPLES), GROUP_LEARNER, "0-1"),  # the learner's to ack
            ("XTRIM", KEYS.stream(SAMPLES), "MINID", "0-1"),
            ("INCRBY", KEYS.acked(SAMPLES), "1"),
        ],
        "learner": [
            ("XADD", KEYS.stream(TRAJECTORIES), "*", "m", "x"),
            ("XADD", KEYS.stream(RESETS), "*", "m", "x"),
            ("SET", "other:key", "x"),  # nothing outside the gpo: namespace
            ("XACK", traj, GROUP_ESTIMATORS, "0-1"),
            ("XTRIM", KEYS.stream(PROMPTS), "MINID", "0-1"),  # it makes prompts: no trimming
            ("INCRBY", KEYS.produced(SAMPLES), "1"),
        ],
    }
    # trimming is a consumer's (redis.trim_interval; this pipeline keeps every entry for the
    # ledger): each role may trim the streams it consumes (MINID 0-1 trims nothing here)
    for role, streams in (("actor", (PROMPTS, RESETS)), ("estimator", (TRAJECTORIES,))):
        for stream in streams:
            client = role_client(server, role)
            assert client.execute_command("XTRIM", KEYS.stream(stream), "MINID", "0-1") == 0
            client.execute_command("XINFO", "GROUPS", KEYS.stream(stream))
    assert role_client(server, "learner").xtrim(KEYS.stream(SAMPLES), minid="0-1") == 0
    # nor through a script: every command inside one is checked against the caller's rules
    with pytest.raises(redis.exceptions.ResponseError, match="(?i)can't access|permission"):
        role_client(server, "actor").eval(
            "return redis.call('XACK', KEYS[1], 'estimators', '0-1')", 1, traj
        )
    for role, commands in refused.items():
        client = role_client(server, role)
        for command in commands:
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command("FLUSHALL")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command("KEYS", "*")
    assert admin.xlen(KEYS.stream(SAMPLES)) > 0  # nothing above reached the data
    assert admin.get("other:key") is None
