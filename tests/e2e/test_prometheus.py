"""RELIABILITY.md test 22: a real Prometheus scrapes every process of a short `gpo launch`.

Prometheus (Debian's `prometheus`, 2.42) runs with the shipped `ops/prometheus.yml`, its
intervals shortened and its file_sd glob pointed at this test's runs directory; then
`gpo launch` runs the learner, two actors and an estimator on the tiny random model until
the checks below are done and Ctrl-C (SIGINT) stops it. Checked:
- every process the launcher lists is a target, discovered from the file_sd list the launcher
  writes (`runs/prometheus/<id>.json`), and `up`; the shipped config passes
  `promtool check config`;
- `promtool check metrics` is clean on every process's `/metrics`;
- the transport counters agree with the Redis ledger: for every work stream, the sum over
  processes of `messages_produced_total` (and of `messages_processed_total` +
  `messages_dead_lettered_total`) as Prometheus scraped it lies between the stream's
  `produced` (`acked`) counter in Redis read before that scrape and read after it;
- the learner's counters agree with its run log at every scrape: `updates_total` = U means
  `samples_trained_total{kind}` is the number of sample ids (reset samples) in the run log's
  first U `update` records.

The run uses the test's own redis-server (`--redis-url`), so the Redis ledger outlives the
launcher, and Prometheus' storage keeps every scrape after the processes are gone. Everything listens on 127.0.0.1; every wait is bounded; every process is stopped in
`finally`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis
import yaml

from ops.redis_server import free_port
from protocol.streams import WORK_STREAMS, Keys
from tests.support.waits import wait_until
from tests.support.workload import ROOT

RUN = "prom"
ACTORS, ESTIMATORS = 2, 1
BATCH = 4
SCRAPE_SECONDS = 1.0
MARGIN_SECONDS = 2.0
"""A scrape this long after a Redis read sees every counter increment that preceded the read
(processes increment right after the Redis reply; engines and PPO run off the event loop)."""

pytestmark = pytest.mark.timeout(420)


def write_run_config(tmp_path: Path, model: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(
        f"""
[run]
id = "{RUN}"
model = "{model}"

[launch]
actors = {ACTORS}
estimators = {ESTIMATORS}
runs_dir = "{tmp_path / "runs"}"
max_minutes = 4.0
progress_seconds = 1.0
stop_timeout = 30.0
report = false

[redis]
block_ms = 300
socket_timeout = 3.0
backlog_limit = 32

[learner]
task = "arithmetic"
batch_size = {BATCH}
token_budget = 256
reset_fraction = 0.5
max_policy_lag = 4
log_sample_ids = true

[learner.lora]
rank = 4
alpha = 8.0

[learner.ppo]
lr = 1e-3

[learner.eval]
every = 0

[learner.feeder]
backlog_target = 8
backlog_bound = 16

[actor]
task = "arithmetic"
batch_messages = 4

[actor.rollout]
n = 2
max_new_tokens = 8

[estimator]
task = "arithmetic"
n_reset = 2

[estimator.rollout]
n = 2
max_new_tokens = 8

[estimator.mc]
k = 2
selection = "random"
"""
    )
    return path


def write_prometheus_config(tmp_path: Path) -> Path:
    """ops/prometheus.yml with short intervals and file_sd on this test's runs directory."""
    cfg = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval=f"{SCRAPE_SECONDS:g}s", evaluation_interval="1s")
    (job,) = cfg["scrape_configs"]
    (sd,) = job["file_sd_configs"]
    (shipped,) = sd["files"]  # ../runs/prometheus/*.json, relative to ops/
    files = str(tmp_path / "runs" / Path(shipped).relative_to("../runs"))
    sd.update(files=[files], refresh_interval="1s")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    return path


class Prometheus:
    """A prometheus server on a free loopback port with its storage in tmp_path."""

    def __init__(self, tmp_path: Path):
        binary = shutil.which("prometheus")
        assert binary, "prometheus not found: run ops/scripts/system-deps.sh (Debian package)"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (tmp_path / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={write_prometheus_config(tmp_path)}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.started = time.time()
        wait_until(self.ready, 60, "prometheus ready")

    def ready(self) -> bool:
        assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
        try:
            return urllib.request.urlopen(self.url + "/-/ready", timeout=2).status == 200
        except OSError:
            return False

    def api(self, path: str, **params) -> dict | list:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        return self.api("query", **params)["result"]

    def targets(self) -> list[dict]:
        return [t for t in self.api("targets")["activeTargets"] if t["labels"].get("run") == RUN]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def ledger(r: redis.Redis) -> dict[str, tuple[int, int]]:
    """Redis's own count per work stream: (produced, acked)."""
    keys = Keys(RUN)
    out = {}
    for s in WORK_STREAMS:
        produced, acked = r.mget(keys.produced(s), keys.acked(s))
        out[s] = (int(produced or 0), int(acked or 0))
    return out


def by_stream(prom: Prometheus, pattern: str, at: float) -> Counter:
    rows = prom.query(f'sum by (stream) ({{__name__=~"{pattern}", run="{RUN}"}})', at)
    return Counter({row["metric"]["stream"]: int(float(row["value"][1])) for row in rows})


def check_metrics(url: str) -> None:
    body = urllib.request.urlopen(url, timeout=10).read()
    assert b"gpo_" in body, url
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        f"promtool check metrics on {url}:\n{done.stdout.decode()}{done.stderr.decode()}"
    )


def check_ledger(prom: Prometheus, r: redis.Redis, scrape_targets: int) -> None:
    """Prometheus' transport counters lie between Redis's counters before and after them."""
    before, t_read = ledger(r), time.time()

    def scraped_since_read() -> float | None:
        now = time.time()
        rows = prom.query(f'timestamp(up{{run="{RUN}"}})', now)
        fresh = len(rows) == scrape_targets and all(
            float(row["value"][1]) >= t_read + MARGIN_SECONDS for row in rows
        )
        return now if fresh else None

    at = wait_until(scraped_since_read, 30, "a scrape of every target after the Redis read")
    up = prom.query(f'up{{run="{RUN}"}}', at)
    assert all(row["value"][1] == "1" for row in up), up
    produced = by_stream(prom, "gpo_.+_messages_produced_total", at)
    processed = by_stream(prom, "gpo_.+_messages_processed_total", at)
    processed += by_stream(prom, "gpo_.+_messages_dead_lettered_total", at)
    after = ledger(r)
    for s in WORK_STREAMS:
        assert before[s][0] <= produced[s] <= after[s][0], (s, before, dict(produced), after)
        assert before[s][1] <= processed[s] <= after[s][1], (s, before, dict(processed), after)
    assert before["samples"][0] > 0 and before["trajectories"][1] > 0, before


def learner_scrapes(prom: Prometheus, end: float) -> list[tuple[int, Counter]]:
    """Every scrape of the learner: (updates_total, samples_trained_total by kind)."""
    window = f"[{int(end - prom.started) + 60}s]"
    scrapes: dict[float, tuple[int, Counter]] = {}
    for row in prom.query(f'gpo_learner_updates_total{{run="{RUN}"}}{window}', end):
        for ts, v in row["values"]:
            scrapes[ts] = (int(float(v)), Counter())
    for row in prom.query(f'gpo_learner_samples_trained_total{{run="{RUN}"}}{window}', end):
        for ts, v in row["values"]:
            scrapes[ts][1][row["metric"]["kind"]] = int(float(v))
    return [scrapes[ts] for ts in sorted(scrapes)]


def run_log_prefixes(path: Path) -> list[Counter]:
    """Samples by kind trained in the first U updates of the run log, for U = 0, 1, ..."""
    updates = [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == "update"]
    assert [u["step"] for u in updates] == list(range(1, len(updates) + 1)), "a learner restart?"
    prefixes = [Counter()]
    for u in updates:
        assert len(u["sample_ids"]) == BATCH
        resets = u["resets"]
        prefixes.append(prefixes[-1] + Counter(reset=resets, fresh=BATCH - resets))
    return prefixes


def test_prometheus_scrapes_every_process_of_a_launch(tmp_path, tiny_model_dir, redis_server):
    run_dir = tmp_path / "runs" / RUN
    launch_log = tmp_path / "launch.log"
    prom = launch = None
    try:
        prom = Prometheus(tmp_path)
        with launch_log.open("wb") as out:
            launch = subprocess.Popen(
                [sys.executable, "-m", "ops.launch"]
                + ["--config", str(write_run_config(tmp_path, str(tiny_model_dir)))]
                + ["--redis-url", redis_server.url],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
        workers = wait_until(
            lambda: (
                (run_dir / "launch.json").is_file()
                and json.loads((run_dir / "launch.json").read_text())["workers"]
            ),
            120,
            "launch.json",
        )
        assert len(workers) == 1 + ACTORS + ESTIMATORS

        # 1. every process is a discovered target, and up
        def all_up():
            targets = prom.targets()
            names = {t["labels"]["name"] for t in targets if t["health"] == "up"}
            return targets if names == set(workers) else None

        targets = wait_until(all_up, 150, f"targets {sorted(workers)} up")
        for t in targets:
            name = t["labels"]["name"]
            assert t["scrapeUrl"] == f"http://127.0.0.1:{workers[name]['port']}/metrics"
            assert t["labels"]["process"] == name.split("-")[0]
            assert t["labels"]["job"] == "gpo"

        # 2. promtool is clean on every /metrics
        wait_until(
            lambda: prom.query(f'gpo_learner_updates_total{{run="{RUN}"}} >= 2'),
            180,
            "two learner updates",
        )
        for t in targets:
            check_metrics(t["scrapeUrl"])

        # 3. transport counters against the Redis ledger, mid-run
        check_ledger(prom, redis_server.client(), len(workers))

        # 4. Ctrl-C: the launcher stops every worker (SIGTERM, in-flight work finished)
        launch.send_signal(signal.SIGINT)
        assert launch.wait(90) == 0, launch_log.read_text()[-3000:]
        output = launch_log.read_text()
        assert "stopping (interrupted)" in output, output[-3000:]
        assert "restarting in" not in output, output[-3000:]
        assert not (tmp_path / "runs" / "prometheus" / f"{RUN}.json").exists()

        # 5. the learner's counters against its run log, at every scrape
        prefixes = run_log_prefixes(run_dir / "learner" / "run_log.jsonl")
        scrapes = learner_scrapes(prom, time.time())
        assert scrapes and scrapes[-1][0] >= 2, scrapes
        for updates, trained in scrapes:
            assert trained == prefixes[updates], (updates, trained, prefixes)
        assert scrapes[-1][1]["reset"] > 0, scrapes[-1]
    finally:
        if launch is not None and launch.poll() is None:
            launch.send_signal(signal.SIGINT)  # the launcher stops its workers, then exits
            try:
                launch.wait(60)
            except subprocess.TimeoutExpired:
                launch.kill()
                launch.wait(10)
        if prom is not None:
            prom.stop()
