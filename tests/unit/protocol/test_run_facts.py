"""`[run]`: the run-wide facts, stated once and written into every section that uses them."""

from __future__ import annotations

import pytest

from actors.actor import ActorConfig
from actors.estimator import EstimatorConfig
from learner.config import LearnerConfig
from ops.run_setup import base_model, bootstrap_fields, launch_table
from protocol.config import ConfigError
from protocol.process import common_parser, load_config
from protocol.run import expand_run, with_run_facts

OPTIONS = {"min_steps": 8, "max_steps": 8, "pivot_digits": 1, "pivot_position": "late"}
RUN = {
    "id": "r",
    "model": "/m",
    "task": "pivot",
    "task_options": OPTIONS,
    "sampling": {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 104, "stop": ["\n\n"]},
}


def test_every_fact_lands_in_every_section_that_uses_it():
    data = expand_run({"run": RUN, "actor": {"batch_messages": 3}})
    for role in ("learner", "actor", "estimator"):
        assert (data[role]["task"], data[role]["task_options"]) == ("pivot", OPTIONS), role
    assert data["learner"]["model"] == "/m" and data["learner"]["temperature"] == 0.7
    assert "eval" not in data["learner"]  # the learner's evaluation is its own
    for role in ("actor", "estimator"):
        assert data[role]["engine"]["model"] == "/m"
        assert data[role]["rollout"] == {
            "temperature": 0.7,
            "top_p": 0.9,
            "max_new_tokens": 104,
            "stop": ["\n\n"],
        }
    assert data["actor"]["batch_messages"] == 3  # the section's own keys stay


def test_unstated_facts_are_left_to_the_sections_and_the_input_is_not_changed():
    data = {"run": {"id": "r"}, "actor": {"task": "arithmetic"}}
    assert expand_run(data) == data
    stated = {"run": {"task": "pivot"}}
    expand_run(stated)
    assert stated == {"run": {"task": "pivot"}}


def test_a_section_may_repeat_a_fact_only_with_the_same_value():
    same = expand_run({"run": {"task": "pivot"}, "learner": {"task": "pivot"}})
    assert same["learner"]["task"] == "pivot"
    with pytest.raises(ConfigError, match=r"estimator.rollout.max_new_tokens = 48 contradicts "):
        expand_run(
            {
                "run": {"sampling": {"max_new_tokens": 96}},
                "estimator": {"rollout": {"max_new_tokens": 48}},
            }
        )
    with pytest.raises(ConfigError, match=r"learner.temperature = 0.5 contradicts run.sampling"):
        expand_run({"run": {"sampling": {"temperature": 1.0}}, "learner": {"temperature": 0.5}})


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ({"name": "x"}, r"\[run\] unknown key\(s\): name"),
        ({"task": 3}, r"run.task: expected str"),
        ({"sampling": {"temp": 1.0}}, r"\[run.sampling\] unknown key\(s\): temp"),
        ({"sampling": 1.0}, r"run.sampling: expected a table"),
    ],
)
def test_a_bad_run_table_is_refused_by_name(run, message):
    with pytest.raises(ConfigError, match=message):
        expand_run({"run": run})


def test_each_process_reads_the_run_facts_from_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("GPO_REDIS_URL", raising=False)
    path = tmp_path / "run.toml"
    path.write_text(
        '[run]\nid = "r"\nmodel = "/m"\ntask = "pivot"\n'
        "task_options = { min_steps = 8, max_steps = 8 }\n"
        "[run.sampling]\ntemperature = 0.7\nmax_new_tokens = 104\n"
        "[actor.rollout]\nn = 2\n"
    )
    args = common_parser("t", None).parse_args(["--config", str(path)])
    learner, redis_cfg = load_config(args, "learner", LearnerConfig)
    actor, _ = load_config(args, "actor", ActorConfig)
    estimator, _ = load_config(args, "estimator", EstimatorConfig)
    assert redis_cfg.run_id == "r"
    assert learner.task == actor.task == estimator.task == "pivot"
    assert learner.task_options == actor.task_options == {"min_steps": 8, "max_steps": 8}
    assert learner.model == actor.engine.model == estimator.engine.model == "/m"
    assert learner.temperature == actor.rollout.temperature == estimator.rollout.temperature == 0.7
    assert actor.rollout.max_new_tokens == estimator.rollout.max_new_tokens == 104
    assert (actor.rollout.n, estimator.rollout.n) == (2, 4)  # not a run-wide fact
    # a --set on the command line is a fact like any other
    args = common_parser("t", None).parse_args(
        ["--config", str(path), "--set", "run.sampling.max_new_tokens=8"]
    )
    assert load_config(args, "estimator", EstimatorConfig)[0].rollout.max_new_tokens == 8


def test_the_base_policy_is_bootstrapped_on_the_run_task():
    data = {"run": {"model": "bootstrap", "task": "pivot", "task_options": OPTIONS}}
    assert base_model(data) == "bootstrap" and base_model(data, "/dir") == "/dir"
    launch = launch_table(data, {"actors": 2}, "bootstrap")
    assert launch == {"actors": 2, "bootstrap": {"task": "pivot", **OPTIONS}}
    # recipe fields beyond the task stay; a task option the bootstrap does not know is not
    # passed to it; a recipe that names another task is refused
    run = {"task": "pivot", "task_options": {**OPTIONS, "n_heldout": 9}}
    assert bootstrap_fields(run, {"seed": 3}) == {"seed": 3, "task": "pivot", **OPTIONS}
    with pytest.raises(ConfigError, match=r"launch.bootstrap.task = 'arithmetic' contradicts"):
        bootstrap_fields({"task": "pivot"}, {"task": "arithmetic"})
    with pytest.raises(ConfigError, match="launch.model is now run.model"):
        launch_table({"launch": {"model": "bootstrap"}})
    # with a model directory there is nothing to bootstrap
    assert launch_table(data, {}, "/dir") == {}


def test_on_a_command_line_run_sets_reach_every_section_and_section_sets_override_one():
    data = {"run": {"task": "pivot", "model": "/m"}, "actor": {"batch_messages": 3}}
    out = with_run_facts(data, ["run.task=arithmetic", 'actor.engine.model="/local/m"'])
    assert (
        out["learner"]["task"] == out["actor"]["task"] == out["estimator"]["task"] == "arithmetic"
    )
    assert out["actor"]["engine"]["model"] == "/local/m"  # this process's own override
    assert out["estimator"]["engine"]["model"] == out["learner"]["model"] == "/m"
    assert data["run"]["task"] == "pivot"  # the input is not changed
    # the file itself must state each fact once
    with pytest.raises(ConfigError, match=r"actor.task = 'x' contradicts run.task = 'pivot'"):
        with_run_facts({"run": {"task": "pivot"}, "actor": {"task": "x"}}, [])
