"""The private redis-server of gpo launch: its own session, and never left behind."""

from __future__ import annotations

import os

import pytest

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
