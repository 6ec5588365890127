"""Every role's config is checked before the launcher starts anything: a mistake in any
section, key, type or `--set` is one line and exit 2, with no Redis, policy or run dir made."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.launch import main
from ops.run_setup import validate_roles
from protocol.config import ConfigError, load_toml

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = [
    ROOT / "ops" / "configs" / "demo.toml",
    ROOT / "ops" / "configs" / "pivot.toml",
    ROOT / "ops" / "configs" / "smollm2.toml",
    ROOT / "ops" / "deploy" / "configs" / "gpu.toml",
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_the_shipped_configs_validate(config):
    validate_roles(load_toml(config), [], "some/model")


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("nosuch.key=1", "unknown section(s) nosuch"),
        ("learner.ppo.lr=abc", "learner.ppo.lr: expected float"),
        ("learner.nokey=1", "[learner] unknown key(s): nokey"),
        ("actor.rollout.nokey=1", "[actor.rollout] unknown key(s): nokey"),
        ('estimator.mc.budget="zz"', "estimator.mc.budget: must be one of"),
        ("run.name=1", "[run] unknown key(s): name"),
        # a run-wide fact set on the command line must still suit every section
        ('run.task="nope:Nope"', "nope"),
        ('launch.model="x"', "launch.model is now run.model"),
        # across roles: an actor lagging more than the learner accepts makes stale samples
        ("actor.max_policy_lag=9", "actor.max_policy_lag (9) exceeds learner.max_policy_lag (4)"),
        # producers stop at the limit: 5 unacked updates of 64 samples would never arrive
        ("learner.checkpoint_every=5", "samples backlog limit (256"),
        # redis-server would refuse it at start (it takes whole numbers with a unit)
        ('launch.redis_maxmemory="4.5mb"', "launch.redis_maxmemory must be a whole number"),
    ],
)
def test_a_mistake_in_any_role_is_one_line_before_anything_starts(tmp_path, capsys, flag, message):
    runs = tmp_path / "runs"
    rc = main(
        [
            "--config",
            str(ROOT / "ops" / "configs" / "demo.toml"),
            "--run-id",
            "x",
            "--set",
            f'launch.runs_dir="{runs}"',
            "--set",
            flag,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("gpo launch: error: ")
    assert message in err[0]
    assert not runs.exists()  # no run dir, so no Redis and no policy either


def test_validation_sees_the_workers_sets_not_only_the_file():
    data = load_toml(ROOT / "ops" / "configs" / "demo.toml")
    validate_roles(data, ["actor.max_policy_lag=4"], "")  # equal to the learner's: fine
    with pytest.raises(ConfigError, match="exceeds"):
        validate_roles(data, ["actor.max_policy_lag=4", "learner.max_policy_lag=3"], "")


def test_the_samples_backlog_must_hold_what_the_learner_keeps_unacked():
    data = load_toml(ROOT / "ops" / "configs" / "demo.toml")  # batch 64, limit 256
    validate_roles(data, ["learner.checkpoint_every=4"], "")  # 4 x 64 = 256: just fits
    with pytest.raises(ConfigError, match=r"4 x 64 = 256 samples held unacked"):
        validate_roles(data, ["learner.checkpoint_every=4", "redis.backlog_limits.samples=255"], "")
    with pytest.raises(ConfigError, match=r"1 x 128 = 128"):  # 64 fresh + 64 resets
        validate_roles(data, ['learner.batch_mode="fresh"', "redis.backlog_limits.samples=127"], "")
