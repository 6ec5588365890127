"""`gpo inspect`: the critical-step page, rendered by headless Chromium (Debian `chromium`).

A run's streams are written by hand into a private redis-server (no engine, no GPU): a fresh
trajectory with a reset request at step 1 and two reset rollouts from it, and a fresh
trajectory without one whose values come from its training sample. `gpo inspect` reads them
through `--redis-url` (and, in the second test, from a copy of a stopped server's AOF
directory, which must stay untouched). Chromium then takes a screenshot (a real picture,
with the critical-step highlight colour in it) and dumps the DOM, where the critical step,
the values and advantages, and the reset rollouts must be.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from ops.cli import main as gpo
from ops.redis_server import RedisServer
from protocol.codec import encode
from protocol.messages import ResetRequest, Sample, Trajectory
from protocol.streams import RESETS, SAMPLES, TRAJECTORIES, Keys

RUN = "insp"
PROMPT = "q: 12+5*3?\n"
STEPS = ["12+5=17\n", "17*3=52\n", "a: 52"]  # step 1 is the pivotal mistake
VALUES = [0.5, 0.75, 0.0, 0.0]  # V(s_0)..V(s_3); A = +0.25, -0.75, 0.0
RESET_STEPS = [["17*3=51\n", "a: 51"], ["17*3=50\n", "a: 50"]]
ODD_ID = "p:<b>1</b>/0"  # markup in an id must come out as text
HIGHLIGHT = (255, 243, 196)  # background of `tr.critical` (#fff3c4)

pytestmark = pytest.mark.timeout(180)


def trajectory(tok, tid, steps, kind="fresh", reward=0.0, parent=None, reset_step=None, kept=""):
    ids = [tok.encode(s, add_special_tokens=False) for s in steps]
    spans, start = [], 0
    for piece in ids:
        spans.append((start, start + len(piece)))
        start += len(piece)
    prompt = tok.encode(PROMPT, add_special_tokens=False)
    completion = [i for piece in ids for i in piece]
    return Trajectory(
        id=tid,
        run=RUN,
        ts=time.time(),
        prompt_id=tid.rsplit("/", 1)[0],
        task="arithmetic",
        answer="51",
        kind=kind,
        parent_id=parent,
        reset_step=reset_step,
        reset_value=None if parent is None else VALUES[reset_step],
        prompt_len=len(prompt),
        prefix_token_ids=prompt + tok.encode(kept, add_special_tokens=False),
        completion_token_ids=completion,
        logprobs=[-1.0] * len(completion),
        step_spans=spans,
        reward=reward,
        policy_version=3,
        actor="actor-0",
        gen_seconds=0.1,
    )


def write_run(r, tok) -> None:
    """The streams of a tiny run: what actors and estimators would have written."""
    keys = Keys(RUN)
    fresh = trajectory(tok, "p:0/0", STEPS)
    plain = trajectory(tok, ODD_ID, ["12+5=17\n", "17*3=51\n", "a: 51"], reward=1.0)
    prompt = tok.encode(PROMPT, add_special_tokens=False)
    reset = ResetRequest(
        id="reset:p:0/0",
        run=RUN,
        ts=time.time(),
        trajectory_id="p:0/0",
        prompt_id="p:0",
        task="arithmetic",
        answer="51",
        critical_step=1,
        prompt_len=len(prompt),
        prefix_token_ids=prompt + tok.encode(STEPS[0], add_special_tokens=False),
        step_values=VALUES,
        advantages=np.diff(VALUES),
        value=VALUES[1],
        n=2,
        policy_version=3,
        selection="advantage",
    )
    kids = [
        trajectory(tok, f"reset:p:0/0/{i}", s, "reset", float(i == 0), "p:0/0", 1, kept=STEPS[0])
        for i, s in enumerate(RESET_STEPS)
    ]
    n = len(plain.prefix_token_ids) + len(plain.completion_token_ids)
    sample = Sample(
        id=ODD_ID,
        run=RUN,
        ts=time.time(),
        prompt_id="p:1",
        kind="fresh",
        token_ids=np.concatenate([plain.prefix_token_ids, plain.completion_token_ids]),
        loss_mask=[0] * len(plain.prefix_token_ids) + [1] * len(plain.completion_token_ids),
        logprobs=[0.0] * n,
        advantages=[0.0] * n,
        returns=[],
        step_values=[1.0, 1.0, 1.0, 1.0],
        reward=1.0,
        policy_version=3,
    )
    for stream, msg in [(TRAJECTORIES, fresh), (TRAJECTORIES, plain), (RESETS, reset)]:
        r.xadd(keys.stream(stream), {"m": encode(msg)})
    for msg in kids:
        r.xadd(keys.stream(TRAJECTORIES), {"m": encode(msg)})
    r.xadd(keys.stream(SAMPLES), {"m": encode(sample)})


def make_run_dir(tmp_path: Path, model: Path) -> Path:
    run_dir = tmp_path / "runs" / RUN
    run_dir.mkdir(parents=True)
    (run_dir / "launch.json").write_text(json.dumps({"run_id": RUN, "model": str(model)}))
    return run_dir


def chromium(*args: str, tmp_path: Path) -> str:
    exe = shutil.which("chromium")
    assert exe, "Debian chromium is missing: run ops/scripts/system-deps.sh"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    out = subprocess.run(
        [exe, *flags, *args], capture_output=True, text=True, timeout=90, check=True
    )
    return out.stdout


def test_inspect_page_in_headless_chromium(redis_server, tiny_model_dir, tmp_path):
    write_run(redis_server.client(), AutoTokenizer.from_pretrained(tiny_model_dir))
    run_dir = make_run_dir(tmp_path, tiny_model_dir)
    assert gpo(["inspect", str(run_dir), "--redis-url", redis_server.url]) == 0
    page = run_dir / "inspect.html"
    assert not re.search(r"\b(src|href)=|url\(|@import", page.read_text())  # self-contained

    # 1. The screenshot: a real picture, and the critical-step highlight is painted.
    png = tmp_path / "inspect.png"
    chromium(f"--screenshot={png}", "--window-size=1200,1600", page.as_uri(), tmp_path=tmp_path)
    assert png.stat().st_size > 10_000
    image = Image.open(png).convert("RGB")
    assert image.size == (1200, 1600)
    assert len(image.getcolors(maxcolors=1 << 20)) > 50
    assert np.all(np.asarray(image) == HIGHLIGHT, axis=-1).sum() > 1_000

    # 2. The DOM: both trajectories, the critical step with its values, the reset rollouts.
    dom = chromium("--dump-dom", page.as_uri(), tmp_path=tmp_path)
    sections = re.findall(r'<section class="trajectory" data-trajectory-id="([^"]*)"', dom)
    assert sections == ["p:0/0", "p:&lt;b&gt;1&lt;/b&gt;/0"]
    assert "<b>1</b>" not in dom
    first, second = dom.split('<section class="trajectory"')[1:]
    assert PROMPT.strip() in first
    critical = re.findall(r'<tr class="step critical">(.*?)</tr>', first, re.S)
    assert len(critical) == 1 and "17*3=52" in critical[0]
    assert re.search(r'class="num value">0\.75<.*class="num advantage">-0\.75<', critical[0])
    values = re.findall(r'class="num value">([-+0-9.]+)<', first)
    advantages = re.findall(r'class="num advantage">([-+0-9.]+)<', first)
    assert values == ["0.50", "0.75", "0.00", "0.00"]  # three steps, then V(s_T)
    assert advantages == ["+0.25", "-0.75", "+0.00"]
    rollouts = re.findall(
        r'<div class="reset-rollout" data-parent-id="p:0/0"(.*?)</div>', first, re.S
    )
    assert len(rollouts) == 2
    assert "reward 1.00" in rollouts[0] and "17*3=51" in rollouts[0]
    assert "reward 0.00" in rollouts[1] and "17*3=50" in rollouts[1]
    assert "mean reward 0.50" in first
    # The trajectory without a reset request: values from its sample, nothing highlighted.
    assert "critical" not in second.split("<table")[1] and "reset-rollout" not in second
    assert re.findall(r'class="num advantage">([-+0-9.]+)<', second) == ["+0.00"] * 3


def test_inspect_reads_a_copy_of_a_stopped_runs_aof(tiny_model_dir, tmp_path):
    run_dir = make_run_dir(tmp_path, tiny_model_dir)
    server = RedisServer(run_dir / "redis", aof=True).start()
    try:
        write_run(server.client(), AutoTokenizer.from_pretrained(tiny_model_dir))
    finally:
        server.stop()  # SIGTERM: the AOF is flushed
    files = sorted(p for p in (run_dir / "redis").rglob("*") if p.is_file())
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    out = tmp_path / "page.html"
    assert gpo(["inspect", str(run_dir), "--limit", "1", "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count('<section class="trajectory"') == 1
    assert '<tr class="step critical">' in page  # the one with a reset request comes first
    after = sorted(p for p in (run_dir / "redis").rglob("*") if p.is_file())
    assert after == files
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in after} == before
