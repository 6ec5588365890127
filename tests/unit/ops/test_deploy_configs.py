"""Every shipped config loads through the typed configs, so no example rots.

Each TOML under ops/configs and ops/deploy/configs is read the way the processes read it
(`protocol.process.load_config` for `[learner]`, `[actor]`, `[estimator]` with `[run]` and
`[redis]`; `launch_table` for `[launch]`), its task spec is built, and the three processes
must agree on the task; each shipped config states the run-wide facts once, in `[run]`. The Kubernetes files and the Prometheus config must be valid YAML
of the expected shape, and everything the kustomization names must exist.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from actors.actor import ActorConfig
from actors.estimator import EstimatorConfig
from actors.tasks.base import load_task
from learner.config import LearnerConfig
from ops.launch import LaunchConfig
from ops.run_setup import base_model, launch_table
from ops.tiny_policy.bootstrap import BootstrapConfig
from protocol.config import from_mapping, load_toml
from protocol.process import common_parser, load_config
from protocol.run import FACTS

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "ops" / "deploy"
CONFIGS = sorted([*(ROOT / "ops" / "configs").glob("*.toml"), *(DEPLOY / "configs").glob("*.toml")])
PROCESSES = {"learner": LearnerConfig, "actor": ActorConfig, "estimator": EstimatorConfig}
SECTIONS = {"run", "redis", "metrics", "launch", *PROCESSES}


def test_there_are_configs_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in CONFIGS}
    assert {"ops/configs/demo.toml", "ops/deploy/configs/gpu.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_config_loads_through_the_typed_configs(path, monkeypatch):
    monkeypatch.delenv("GPO_REDIS_URL", raising=False)
    data = load_toml(path)
    assert set(data) <= SECTIONS, f"unknown sections: {sorted(set(data) - SECTIONS)}"
    present = [name for name in PROCESSES if name in data]
    assert present, "a config with no process section"
    args = common_parser("test", None).parse_args(["--config", str(path)])
    tasks = {}
    for name in present:
        cfg, redis_cfg = load_config(args, name, PROCESSES[name])
        assert redis_cfg.run_id == data.get("run", {}).get("id", "default")
        load_task(cfg.task, **cfg.task_options)  # the spec imports and takes its options
        tasks[name] = (cfg.task, cfg.task_options)
    assert len(set(map(repr, tasks.values()))) == 1, f"processes disagree on the task: {tasks}"
    if "launch" in data:
        model = base_model(data)
        launch = from_mapping(LaunchConfig, launch_table(data, {}, model), "launch")
        if model == "bootstrap":  # the base policy is trained on the run's task
            boot = from_mapping(BootstrapConfig, launch.bootstrap, "launch.bootstrap")
            task, options = tasks["learner"]
            assert load_task(task).name == load_task(boot.task_spec).name
            trained = boot.task_options()
            assert {k: trained[k] for k in options} == options, (options, trained)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_run_wide_facts_are_stated_once_in_run(path):
    data = load_toml(path)
    run = data["run"]
    assert {"model", "task", "sampling"} <= set(run), sorted(run)
    for fact, targets in FACTS.items():
        for target in targets:
            *tables, leaf = target.split(".")
            table = data
            for name in tables:
                table = table.get(name, {})
            assert leaf not in table, f"{target} restates run.{fact}"


def test_gpu_example_is_a_gpu_run():
    data = load_toml(DEPLOY / "configs" / "gpu.toml")
    args = common_parser("test", None).parse_args(
        ["--config", str(DEPLOY / "configs" / "gpu.toml")]
    )
    learner, redis_cfg = load_config(args, "learner", LearnerConfig)
    actor, _ = load_config(args, "actor", ActorConfig)
    estimator, _ = load_config(args, "estimator", EstimatorConfig)
    assert "url" not in data["redis"], "the Redis URL (and password) comes from the command line"
    assert learner.device == "cuda" and learner.dtype == "bf16"
    assert actor.engine.kind == estimator.engine.kind == "vllm"
    assert actor.engine.dtype == estimator.engine.dtype == "bfloat16"
    assert actor.engine.model == estimator.engine.model == learner.model
    assert actor.rollout == estimator.rollout, "continuations must sample like the actors"
    # the learner holds checkpoint_every x batch_size samples unacked (LearnerConfig docs)
    held = learner.checkpoint_every * learner.batch_size
    assert redis_cfg.backlog_limit_for("samples") > held


def _yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.mark.parametrize(
    "path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_kubernetes_manifests_are_well_formed(path):
    docs = _yaml_docs(path)
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"].startswith("gpo"), doc["metadata"]
        if doc["kind"] in ("Deployment", "StatefulSet"):
            pod = doc["spec"]["template"]
            assert (
                doc["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
            )
            for c in pod["spec"]["containers"]:
                assert c["image"] and (c.get("command") or c.get("args")), c


def test_kubernetes_roles_log_in_as_their_own_acl_users():
    """Redis loads the ACL file (no shared password) and each worker reads its own role's URL."""
    docs = {
        (d["kind"], d["metadata"]["name"]): d
        for path in (DEPLOY / "k8s").glob("*.yaml")
        for d in _yaml_docs(path)
    }
    (redis_c,) = docs[("StatefulSet", "gpo-redis")]["spec"]["template"]["spec"]["containers"]
    assert "--aclfile" in redis_c["args"] and "--requirepass" not in redis_c["args"]
    for kind, role in (
        ("Deployment", "actor"),
        ("Deployment", "estimator"),
        ("StatefulSet", "learner"),
    ):
        (c,) = docs[(kind, f"gpo-{role}")]["spec"]["template"]["spec"]["containers"]
        (url,) = [e for e in c["env"] if e["name"] == "GPO_REDIS_URL"]
        assert url["valueFrom"]["secretKeyRef"]["key"] == f"{role}-url", url
    for unit in (DEPLOY / "systemd").glob("*.service"):
        role = unit.name.removeprefix("gpo-").split("@")[0].split(".")[0]
        assert f"EnvironmentFile=/etc/gpo/{role}.env" in unit.read_text(), unit


def test_kustomization_names_existing_files_and_a_valid_config():
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (DEPLOY / res).is_file(), res
    for gen in kust["configMapGenerator"]:
        for item in gen["files"]:
            assert (DEPLOY / item.split("=", 1)[-1]).resolve() in CONFIGS, item


def test_worker_deployments_mount_the_config_and_expose_metrics():
    by_kind = {}
    for path in (DEPLOY / "k8s").glob("*.yaml"):
        for doc in _yaml_docs(path):
            by_kind[(doc["kind"], doc["metadata"]["name"])] = doc
    for kind, name, entry in (
        ("Deployment", "gpo-actor", "gpo-actor"),
        ("Deployment", "gpo-estimator", "gpo-estimator"),
        ("StatefulSet", "gpo-learner", "gpo-learner"),
    ):
        pod = by_kind[(kind, name)]["spec"]["template"]
        annotations = pod["metadata"]["annotations"]
        (c,) = pod["spec"]["containers"]
        cmd = [*c.get("command", []), *c.get("args", [])]
        assert cmd[0] == entry and "--config" in cmd and "--metrics-port" in cmd, cmd
        port = cmd[cmd.index("--metrics-port") + 1]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == port
        assert any(p["containerPort"] == int(port) for p in c["ports"])


def test_prometheus_config_is_valid_yaml_with_file_discovery():
    cfg = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    (sd,) = job["file_sd_configs"]
    for pattern in sd["files"]:
        # file_sd globs only the last path segment (Prometheus refuses the config otherwise)
        assert "*" not in str(Path(pattern).parent), pattern
