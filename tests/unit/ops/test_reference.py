"""docs/CONFIG.md and docs/METRICS.md are generated from the code and must not drift; every
config field carries a docstring."""

import dataclasses
from pathlib import Path

import pytest

from ops.reference import config_reference, field_docs, metrics_reference

ROOT = Path(__file__).resolve().parents[3]


def test_docs_are_generated():
    assert (ROOT / "docs/CONFIG.md").read_text() == config_reference(), (
        "run: python -m ops.reference config > docs/CONFIG.md"
    )
    assert (ROOT / "docs/METRICS.md").read_text() == metrics_reference(), (
        "run: python -m ops.reference metrics > docs/METRICS.md"
    )


def _configs():
    from actors.actor import ActorConfig
    from actors.engines.factory import EngineConfig
    from actors.estimator import EstimatorConfig
    from actors.mc_config import McConfig
    from actors.rollout import RolloutConfig
    from actors.steps import StepConfig
    from learner.config import LearnerConfig
    from ops.launch import LaunchConfig
    from protocol.config import RedisConfig

    return [
        RedisConfig,
        LaunchConfig,
        LearnerConfig,
        ActorConfig,
        EstimatorConfig,
        EngineConfig,
        RolloutConfig,
        McConfig,
        StepConfig,
    ]


@pytest.mark.parametrize("cls", _configs(), ids=lambda c: c.__name__)
def test_every_config_field_is_documented(cls):
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if f.init and not docs.get(f.name)]
    assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"
