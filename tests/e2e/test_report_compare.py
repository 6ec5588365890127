"""`gpo report RUN_A RUN_B`: two runs overlaid on one page, rendered by headless Chromium.

Two run directories are written by hand (a learner run log with evaluations, the launcher's
progress scrapes with generated tokens). The page must show both runs in its table with
their figures, and the screenshot must paint both runs' lines (matplotlib's first two
colours) from the PNGs it embeds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ops.cli import main as gpo
from tests.e2e.test_inspect import chromium

BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib C0, C1


def write_run(run: Path, scores: list[float], tokens_per_update: int) -> None:
    (run / "learner").mkdir(parents=True)
    log, progress = [], []
    for i, score in enumerate(scores):
        step = 10 * i
        log.append({"event": "eval", "t": 60.0 * i + 1, "step": step, "pass_at_1": score})
        log.append({"event": "update", "t": 60.0 * i + 2, "step": step + 1, "samples": 64})
        progress.append(
            {
                "t": 60.0 * i + 3,
                "backlog": {},
                "processes": {
                    "learner": {"gpo_learner_updates_total": step},
                    "actor-0": {"gpo_actor_generated_tokens_total": step * tokens_per_update},
                },
            }
        )
    (run / "learner" / "run_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (run / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in progress))


def test_two_runs_overlaid_in_headless_chromium(tmp_path):
    write_run(tmp_path / "ppo", [0.30, 0.35, 0.40, 0.42], tokens_per_update=1000)
    write_run(tmp_path / "gpo", [0.30, 0.38, 0.45, 0.50], tokens_per_update=2500)
    out = tmp_path / "compare"
    assert gpo(["report", str(tmp_path / "ppo"), str(tmp_path / "gpo"), "--out", str(out)]) == 0
    page = out / "compare.html"
    assert sorted(p.name for p in out.glob("*.png")) == [
        "pass_at_1_vs_time.png",
        "pass_at_1_vs_tokens.png",
        "pass_at_1_vs_updates.png",
    ]

    dom = chromium("--dump-dom", page.as_uri(), tmp_path=tmp_path)
    rows = re.findall(r"<tr><td>(.*?)</td></tr>", dom)
    cells = [row.split("</td><td>") for row in rows]
    assert cells == [
        ["ppo", "31", "0.300", "0.420", "0.420", "3.0", "3e+04"],
        ["gpo", "31", "0.300", "0.500", "0.500", "3.0", "7.5e+04"],
    ]
    assert len(re.findall(r'<img src="pass_at_1_vs_\w+\.png"', dom)) == 3

    png = tmp_path / "compare.png"
    chromium(f"--screenshot={png}", "--window-size=1000,2000", page.as_uri(), tmp_path=tmp_path)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    for colour in (BLUE, ORANGE):  # both runs' lines are painted
        assert np.all(pixels == colour, axis=-1).sum() > 500, colour
