"""The private redis-server of gpo launch: its own session, and never left behind."""

from __future__ import annotations

import os

import pytest
import redis

from ops.redis_server import RedisServer


def test_redis_server_runs_in_its_own_session(tmp_path):
    server = RedisServer(tmp_path / "r").start()
    try:
        # a Ctrl-C at the terminal (SIGINT to the foreground process group) spares it
        assert os.getpgid(server.proc.pid) != os.getpgid(0)
        assert os.getsid(server.proc.pid) == server.proc.pid
    finally:
        server.stop()


def test_a_server_that_does_not_answer_in_time_is_killed_not_orphaned(tmp_path):
    server = RedisServer(tmp_path / "r")
    with pytest.raises(RuntimeError, match="did not answer PING"):
        server.start(timeout=0.0)
    assert server.proc.poll() is not None


def test_a_password_never_appears_on_the_command_line(tmp_path):
    server = RedisServer(tmp_path / "r", password="s3cret-pw").start()
    try:
        assert not any("s3cret-pw" in part for part in server.cmdline())
        assert server.client().ping()  # the password is in force, from a private file
        conf = tmp_path / "r" / "auth.conf"
        assert conf.stat().st_mode & 0o077 == 0
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, socket_timeout=3).ping()
    finally:
        server.stop()
