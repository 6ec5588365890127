"""The supervisor's verdict on a worker that exited: restart it, or stop the run.

Found by the chaos soak: a worker restarted while Redis was down (killed, restarting) exits 2
("cannot reach Redis") and the supervisor took that for a user mistake and stopped the run.
"""

from __future__ import annotations

from pathlib import Path

from ops.launch import LaunchConfig, Launcher
from ops.worker import Worker


class ExitedProc:
    """A finished process as Worker sees it."""

    def __init__(self, code: int):
        self.returncode = code

    def poll(self) -> int:
        return self.returncode


def launcher_with(tmp_path: Path, name: str, code: int, restarts: int) -> Launcher:
    launcher = Launcher(LaunchConfig(runs_dir=str(tmp_path)), tmp_path / "run.toml", "t", "x")
    worker = Worker(name, "actors.actor", [], tmp_path / f"{name}.log", 0, restarts=restarts)
    worker.proc = ExitedProc(code)
    launcher.workers = [worker]
    return launcher


def test_exit_2_on_the_first_start_stops_the_run(tmp_path):
    launcher = launcher_with(tmp_path, "actor-0", code=2, restarts=0)
    assert "actor-0 refused to start (exit 2)" in launcher.supervise_once()
    assert launcher.failed


def test_exit_2_on_a_restart_is_restarted_with_backoff(tmp_path):
    launcher = launcher_with(tmp_path, "actor-0", code=2, restarts=1)
    assert launcher.supervise_once() is None
    assert not launcher.failed and launcher.workers[0].next_start > 0


def test_a_killed_worker_is_restarted(tmp_path):
    launcher = launcher_with(tmp_path, "learner", code=-9, restarts=0)
    assert launcher.supervise_once() is None and launcher.workers[0].next_start > 0


def test_restarts_stop_at_the_cap_with_a_clear_final_error(tmp_path):
    launcher = launcher_with(tmp_path, "estimator-0", code=1, restarts=10)
    (tmp_path / "estimator-0.log").write_text("RuntimeError: boom\n")
    said = launcher.supervise_once()
    assert "estimator-0 exited with code 1 after 10 restarts; giving up" in said
    assert "boom" in said and launcher.failed
    below = launcher_with(tmp_path, "estimator-0", code=1, restarts=9)
    assert below.supervise_once() is None and not below.failed
