"""`gpo offline` and `gpo experiment offline` take their defaults from one place: the
dataclasses of learner/offline (PairConfig, TrainArgs)."""

from __future__ import annotations

import dataclasses

from learner.offline.cli import _parser
from learner.offline.pairs import PairConfig
from learner.offline.settings import TrainArgs, field_defaults
from ops.experiments.offline import Settings


def test_the_command_lines_defaults_are_the_dataclasses():
    pairs = _parser().parse_args(["pairs", "--model", "m", "--out", "o"])
    base = PairConfig()
    assert (pairs.samples, pairs.branch_n, pairs.branch_rounds, pairs.seed) == (
        base.samples,
        base.branch_n,
        base.branch_rounds,
        base.seed,
    )
    assert pairs.k == base.mc.k and pairs.temperature == base.sampling.temperature
    train = _parser().parse_args(
        ["train", "--method", "dpo", "--pairs", "p", "--model", "m", "--out", "o"]
    )
    run = TrainArgs(method="dpo", pairs="p", model="m", out="o")
    for name in ("steps", "batch", "lr", "beta", "lora_rank", "seed"):
        assert getattr(train, name) == getattr(run, name), name
    study = Settings()
    for name in ("steps", "batch", "lr", "beta", "lora_rank"):
        assert getattr(study, name) == getattr(run, name), name
    assert (study.samples, study.k, study.branch_n) == (base.samples, base.mc.k, base.branch_n)


def test_field_defaults_skips_required_fields_and_builds_factories():
    @dataclasses.dataclass
    class C:
        need: int
        plain: int = 3
        made: list = dataclasses.field(default_factory=lambda: [1])

    assert field_defaults(C) == {"plain": 3, "made": [1]}
