"""Secrets stay off command lines: workers get the Redis URL from the environment, and the
environment's URL wins over the config file's."""

from __future__ import annotations

from pathlib import Path

from actors.actor import ActorConfig
from ops.launch import LaunchConfig, Launcher
from protocol.process import common_parser, load_config

ROOT = Path(__file__).resolve().parents[2]


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
