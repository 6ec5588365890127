"""Secrets stay off command lines: workers get the Redis URL from the environment, and the
environment's URL wins over the config file's. Metrics bind where the config says, loopback
by default."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from actors.actor import ActorConfig
from ops.launch import LaunchConfig, Launcher
from protocol.config import ConfigError
from protocol.metrics import Metrics
from protocol.process import common_parser, load_config

ROOT = Path(__file__).resolve().parents[3]


def test_workers_get_the_redis_url_from_the_environment_not_argv(tmp_path):
    launcher = Launcher(
        LaunchConfig(runs_dir=str(tmp_path), actors=2, estimators=1),
        ROOT / "ops" / "configs" / "demo.toml",
        "t",
        "redis://:hunter2@127.0.0.1:7000/0",
    )
    specs = launcher.worker_specs("/models/base")
    assert [name for name, *_ in specs] == ["learner", "actor-0", "actor-1", "estimator-0"]
    for _name, _module, args, env in specs:
        assert not any("hunter2" in a for a in args) and "--redis-url" not in args
        assert env["GPO_REDIS_URL"] == "redis://:hunter2@127.0.0.1:7000/0"


def test_the_environment_url_wins_over_the_config_file(tmp_path, monkeypatch):
    config = tmp_path / "run.toml"
    config.write_text('[redis]\nurl = "redis://127.0.0.1:1/0"\n[actor]\n')
    args = common_parser("test", None).parse_args(["--config", str(config)])
    monkeypatch.setenv("GPO_REDIS_URL", "redis://:pw@127.0.0.1:2/0")
    _, redis_cfg = load_config(args, "actor", ActorConfig)
    assert redis_cfg.url == "redis://:pw@127.0.0.1:2/0"
    flag = common_parser("test", None).parse_args(
        ["--config", str(config), "--redis-url", "redis://127.0.0.1:3/0"]
    )
    assert load_config(flag, "actor", ActorConfig)[1].url == "redis://127.0.0.1:3/0"
    monkeypatch.delenv("GPO_REDIS_URL")
    assert load_config(args, "actor", ActorConfig)[1].url == "redis://127.0.0.1:1/0"


def test_metrics_bind_address_from_flag_else_config_else_loopback(tmp_path):
    def host(toml: str, *flags: str) -> str:
        config = tmp_path / "run.toml"
        config.write_text(toml)
        args = common_parser("test", None).parse_args(["--config", str(config), *flags])
        load_config(args, "actor", ActorConfig)
        return args.metrics_host

    assert host("[actor]\n") == "127.0.0.1"
    assert host('[metrics]\nhost = "0.0.0.0"\n') == "0.0.0.0"
    assert host('[metrics]\nhost = "0.0.0.0"\n', "--metrics-host", "127.0.0.2") == "127.0.0.2"
    with pytest.raises(ConfigError, match="metrics.host"):
        host("[metrics]\nhost = 9400\n")
    with pytest.raises(ConfigError, match="metrics"):
        host("[metrics]\nport = 9400\n")  # unknown keys are refused, as in every section


def test_metrics_server_answers_only_on_its_bind_address():
    metrics = Metrics("test")
    metrics.counter("probes_total", "Probes.").inc()
    port = metrics.serve(0, host="127.0.0.1")
    url = f"http://127.0.0.1:{port}/metrics"
    assert b"gpo_test_probes_total 1.0" in urllib.request.urlopen(url, timeout=5).read()
    with pytest.raises(OSError):  # 127.0.0.2 is loopback too, but not the bound address
        socket.create_connection(("127.0.0.2", port), timeout=2).close()
