"""Every subcommand and every process entry point, fed a user's mistakes: a missing file,
invalid TOML, an unknown key, a wrong type, an unreachable Redis. Each answers with one
`error:` line and exit code 2: never a traceback, and nothing built or started first.

In-process (`main(argv)` of the console scripts' modules: the same code the `gpo`,
`gpo-actor`, `gpo-estimator` and `gpo-learner` scripts run), so the sweep takes seconds.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from pathlib import Path

import pytest

from ops.redis_server import free_port

BAD_TOML = "[learner\nlr = 1\n"


def configs(tmp: Path, section: str) -> dict[str, Path]:
    """The mistakes, each as a config file; the key ones in `section`, the table the command
    reads."""
    files = {
        "missing file": tmp / "missing.toml",
        "invalid TOML": tmp / "bad.toml",
        "unknown key": tmp / f"unknown-{section}.toml",
        "wrong type": tmp / f"wrongtype-{section}.toml",
    }
    files["invalid TOML"].write_text(BAD_TOML)
    files["unknown key"].write_text(f"[{section}]\nnosuch_key = 1\n")
    key = {"bootstrap": "seed", "actor": "batch_messages", "estimator": "n_reset"}
    files["wrong type"].write_text(f'[{section}]\n{key.get(section, "batch_size")} = "abc"\n')
    return files


# command -> (module whose main() runs it, argv with {config}, the section its keys are read from)
COMMANDS = {
    "gpo launch": ("ops.cli", ["launch", "--config", "{config}", "--run-id", "sweep"], "learner"),
    "gpo bootstrap": ("ops.cli", ["bootstrap", "--config", "{config}"], "bootstrap"),
    "gpo experiment ablation": (
        "ops.cli",
        ["experiment", "ablation", "--config", "{config}", "--seeds", "0", "--minutes", "0.1"],
        "learner",
    ),
    "gpo bench chaos": ("ops.cli", ["bench", "chaos", "--config", "{config}"], "learner"),
    "gpo bench gpo-overhead": (
        "ops.cli",
        ["bench", "gpo-overhead", "--config", "{config}"],
        "learner",
    ),
    "gpo bench learner": ("ops.cli", ["bench", "learner", "--config", "{config}"], "learner"),
    "gpo bench scaling": ("ops.cli", ["bench", "scaling", "--config", "{config}"], "learner"),
    "gpo-learner": ("learner.main", ["--config", "{config}"], "learner"),
    "gpo-actor": ("actors.actor", ["--config", "{config}"], "actor"),
    "gpo-estimator": ("actors.estimator", ["--config", "{config}"], "estimator"),
}
MISTAKES = ("missing file", "invalid TOML", "unknown key", "wrong type")


def run(module: str, argv: list[str]) -> tuple[int, list[str]]:
    """Exit code and the non-empty stderr lines of `main(argv)`; an exception fails the test
    with its traceback (what a user would have seen)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = importlib.import_module(module).main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def assert_one_line(code, lines: list[str], what: str) -> None:
    assert code == 2, (what, code, lines)
    assert not any("Traceback" in line for line in lines), (what, lines)
    assert len(lines) == 1 and "error:" in lines[0], (what, lines)


@pytest.mark.parametrize("mistake", MISTAKES)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_config_mistake_is_one_line_and_exit_code_2(command, mistake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a command might write goes here
    module, argv, section = COMMANDS[command]
    config = configs(tmp_path, section)[mistake]
    code, lines = run(module, [a.replace("{config}", str(config)) for a in argv])
    assert_one_line(code, lines, f"{command} with {mistake}")
    if mistake != "missing file":
        assert str(config.name) in lines[0] or "abc" in lines[0] or "nosuch_key" in lines[0]
    assert not (tmp_path / "runs").exists(), "a run directory was made before the refusal"


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("gpo report", ["report", "{tmp}/no-such-run"]),
        ("gpo inspect", ["inspect", "{tmp}/no-such-run"]),
        ("gpo eval", ["eval", "--model", "{tmp}/no-such-model"]),
        ("gpo offline pairs", ["offline", "pairs", "--model", "{tmp}/nope", "--out", "{tmp}/o"]),
        (
            "gpo offline train",
            [
                "offline",
                "train",
                "--method",
                "dpo",
                "--model",
                "{tmp}/nope",
                "--pairs",
                "{tmp}/p",
                "--out",
                "{tmp}/o",
            ],
        ),
    ],
)
def test_a_missing_path_is_one_line_and_exit_code_2(command, argv, tmp_path):
    code, lines = run("ops.cli", [a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert_one_line(code, lines, command)


@pytest.mark.parametrize("module", ["learner.main", "actors.actor", "actors.estimator"])
def test_an_unreachable_redis_is_one_line_and_exit_code_2(module, tiny_model_dir, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        f'[learner]\nmodel = "{tiny_model_dir}"\ncheckpoint_dir = "{tmp_path / "ckpt"}"\n'
        f'[actor.engine]\nmodel = "{tiny_model_dir}"\n[estimator.engine]\nmodel = "{tiny_model_dir}"\n'
    )
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    code, lines = run(module, ["--config", str(config), "--redis-url", url])
    assert_one_line(code, lines[-1:], module)
    assert "cannot reach Redis" in lines[-1] and not any("Traceback" in x for x in lines), lines


def test_gpo_launch_with_an_unreachable_redis_is_one_line(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = Path(__file__).resolve().parents[2] / "ops" / "configs" / "demo.toml"
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, lines = run(
        "ops.cli",
        [
            "launch",
            "--config",
            str(demo),
            "--run-id",
            "sweep",
            "--redis-url",
            url,
            "--model",
            str(tiny_model_dir),
        ],
    )
    assert_one_line(code, lines, "gpo launch --redis-url (unreachable)")
    assert "cannot reach Redis" in lines[0] and not (tmp_path / "runs").exists()
