"""gpo bench chaos: a bounded soak with random faults while GPO trains, then the ledger.

    gpo bench chaos [--minutes 10] [--seed 0] [--mean-gap 20] [--config ops/configs/demo.toml]
                    [--runs-dir runs] [--run-id ID] [--set SECTION.KEY=VALUE ...]
                    [--write-results]

RELIABILITY.md test 23. The run is `gpo launch`'s (ops.launch.Launcher: a private
redis-server with AOF in the run directory, the learner, actors and estimators, crashed
workers restarted under the same consumer name), on the demo config with
`learner.log_sample_ids` on. Once the learner has made its first update, faults come for
`--minutes`, one per `--mean-gap` seconds on average, at seeded random times; the kinds are
dealt from a shuffled deck, so each occurs once in every six faults:
- kill-actor, kill-estimator: `kill -9` of that worker;
- kill-learner: `kill -9` of the learner between a publish and its commit (it waits, up to
  a minute, for an update past the newest checkpoint: a version is out that a restart rolls
  back);
- pause-redis: SIGSTOP of redis-server for 2-8 s, then SIGCONT;
- kill-redis: `kill -9` of redis-server, down 0-5 s, restarted on the same port and
  directory (AOF, appendfsync everysec);
- poison: 1-5 malformed entries (each carrying a unique marker) appended to a random work
  stream with its produced counter, as a broken producer would.
Then the faults stop, the system drains (bounded: every worker up, two updates after the
last fault, every entry pending at that moment acknowledged or dead-lettered), every worker
gets SIGTERM, and the ledger is read from Redis and the learner's run log. The streams are
trimmed as in any run: an audit group copies every entry before a trim may delete it
(ops/bench/chaos_audit.py), and Redis memory is sampled; `--set launch.redis_maxmemory=32mb`
puts the run under memory pressure (writers wait at maxmemory, counted as refused writes).

The ledger (ops/ledger.py has the definitions) follows every message id hop by hop: passed
on (samples: trained, in the final weights), in flight at the stop, dead-lettered, dropped
stale by the learner's `max_policy_lag` rule (by design; the ledger gives each one's lag), or
else **lost**. Exit code 1 when anything is lost or trained twice, when a dead-letter entry is not injected poison, when
injected poison is neither dead nor in flight, when the final checkpoint's trained ids
disagree with the run log's (`ops.ledger.checkpoint_agrees`), when training did not resume
after the faults, when a worker restarted more often than it was killed, or when Redis
memory did not plateau.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from actors.rollout import RolloutConfig
from ops.bench.chaos_audit import Auditor
from ops.bench.chaos_faults import POISON_RE, ChaosConfig, Fault, plan_faults, poison_payload
from ops.bench.chaos_report import Outcome, render, summary
from ops.harness import parser, write_section
from ops.launch import LaunchConfig, Launcher
from ops.launch_progress import progress_line
from ops.ledger import accuracy, pending_entries, read_ledger, read_runlog
from ops.run_setup import base_model, launch_table, split_sets, validate_roles
from protocol.config import ConfigError, apply_sets, from_mapping, load_toml, parse_set_value
from protocol.consumer import FIELD
from protocol.streams import WORK_STREAMS, Keys

ROOT = Path(__file__).resolve().parents[2]
DRAIN_UPDATES = 2
"""Updates the learner must make after the last fault before the run is stopped."""


class Aborted(RuntimeError):
    """The supervisor gave up on the run (a worker refused to start)."""


class Soak:
    """Applies faults to a started Launcher and keeps supervising it between them."""

    def __init__(self, launcher: Launcher, cfg: ChaosConfig):
        self.launcher, self.cfg = launcher, cfg
        self.keys = Keys(launcher.run_id)
        self.runlog = launcher.run_dir / "learner" / "run_log.jsonl"
        self.applied: list[dict] = []
        self.poison: dict[str, list[str]] = {s: [] for s in WORK_STREAMS}
        """Markers of the injected poison, by stream."""
        self.t0 = time.monotonic()
        """When the fault phase began (set by `soak`)."""
        self._next_progress = 0.0
        self.auditor = Auditor(lambda: launcher.redis.client(), self.keys)

    def wait(
        self,
        seconds: float,
        done: Callable[[], bool] | None = None,
        progress=False,
        poll: float = 2.0,
    ) -> bool:
        """Supervise (restart crashed workers) for up to `seconds`, or until `done()`
        (asked every `poll` seconds)."""
        deadline = time.monotonic() + seconds
        next_check = 0.0
        while time.monotonic() < deadline:
            reason = self.launcher.supervise_once()
            if reason is not None:
                raise Aborted(reason)
            if done is not None and time.monotonic() >= next_check:
                if done():
                    return True
                next_check = time.monotonic() + poll
            if progress and time.monotonic() >= self._next_progress:
                rec = self.launcher.snapshot()
                print(progress_line(rec, self.launcher.cfg), flush=True)
                self._next_progress = time.monotonic() + self.cfg.progress_seconds
            time.sleep(min(0.2, poll, max(0.0, deadline - time.monotonic())))
        return done is not None and done()

    def apply(self, fault: Fault) -> None:
        """Inflict one fault; Redis faults end with Redis back up."""
        redis = self.launcher.redis
        note, extra = "", {}
        if fault.kind in ("kill-actor", "kill-estimator", "kill-learner"):
            worker = next(w for w in self.launcher.workers if w.name == fault.target)
            if fault.kind == "kill-learner" and worker.alive():
                extra["uncommitted"] = self.await_uncommitted()
            if worker.alive():
                worker.proc.kill()
                worker.proc.wait(10)
            else:
                note = "skipped: down already (restart pending)"
        elif fault.kind == "pause-redis":
            redis.pause()
            try:
                self.wait(fault.seconds)
            finally:
                redis.resume()
        elif fault.kind == "kill-redis":
            redis.kill9()
            self.wait(fault.seconds)
            redis.start(timeout=60)
        else:
            self.inject(fault.target, fault.count)
        t = round(time.monotonic() - self.t0, 1)
        self.applied.append({**dataclasses.asdict(fault), "t": t, "note": note, **extra})
        what = {"pause-redis": f"{fault.seconds:g} s", "kill-redis": f"down {fault.seconds:g} s"}
        what["poison"] = f"{fault.count} into {fault.target}"
        detail = what.get(fault.kind, fault.target)
        print(f"* fault {len(self.applied)} at {t:.0f} s: {fault.kind} {detail} {note}", flush=True)

    def inject(self, stream: str, count: int) -> None:
        """Append `count` poison entries to `stream` (and its produced counter) in one MULTI."""
        numbers = range(len(self.poison[stream]), len(self.poison[stream]) + count)
        payloads = [poison_payload(stream, n) for n in numbers]
        r = self.launcher.redis.client()
        try:
            pipe = r.pipeline(transaction=True)
            for raw in payloads:
                pipe.xadd(self.keys.stream(stream), {FIELD: raw})
            pipe.incrby(self.keys.produced(stream), count)
            pipe.execute()
        finally:
            r.close()
        self.poison[stream] += [POISON_RE.search(p).group().decode() for p in payloads]

    def await_uncommitted(self) -> bool:
        """Wait (up to a minute) until the learner published an update its newest checkpoint
        does not hold; False when none came (it is killed anyway)."""
        return self.wait(60.0, lambda: self.newest_update() > self.committed_step(), poll=0.05)

    def newest_update(self) -> int:
        """Step of the newest `update` record (written after its version is published)."""
        if not self.runlog.is_file():
            return 0
        with self.runlog.open("rb") as f:
            start = max(0, self.runlog.stat().st_size - 65536)
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()[1 if start else 0 :]
        for line in reversed(lines):  # the last line may be half written
            if '"event": "update"' in line:
                try:
                    return int(json.loads(line)["step"])
                except ValueError:
                    continue
        return 0

    def committed_step(self) -> int:
        latest = self.launcher.run_dir / "learner" / "latest"
        try:
            return int(latest.read_text().strip().removeprefix("step-"))
        except (OSError, ValueError):
            return 0

    def updates(self) -> int:
        """`update` records in the learner's run log so far."""
        if not self.runlog.is_file():
            return 0
        return sum('"event": "update"' in line for line in self.runlog.read_text().splitlines())

    def drain(self) -> str:
        """Wait until every worker is up, the learner made DRAIN_UPDATES updates and every
        entry pending now is acked or dead-lettered; returns "" or what was still missing."""
        r = self.launcher.redis.client()
        try:
            before, start_updates = pending_entries(r, self.keys), self.updates()
            missing = ["not checked"]

            def caught_up() -> bool:
                missing.clear()
                down = [w.name for w in self.launcher.workers if not w.alive()]
                if down:
                    missing.append(f"down: {', '.join(down)}")
                if self.updates() < start_updates + DRAIN_UPDATES:
                    missing.append(f"{DRAIN_UPDATES} updates after the faults")
                now = pending_entries(r, self.keys)
                left = sum(len(before[s] & now[s]) for s in WORK_STREAMS)
                if left:
                    missing.append(f"{left} entries pending since the faults")
                return not missing

            self.wait(self.cfg.drain_minutes * 60, caught_up, progress=True)
            return "; ".join(missing)
        finally:
            r.close()


# ---------------------------------------------------------------- the run


def soak(launcher: Launcher, cfg: ChaosConfig, n_rollouts: int, command: str) -> Outcome:
    """Start the run, warm up, inflict the faults, drain, stop; read the ledger."""
    s = Soak(launcher, cfg)
    aborted, drain, resumed = "", "not reached", False
    try:
        try:
            launcher.start(before_workers=s.auditor.start)
            # 1. warm up: faults start once the learner has trained
            if not s.wait(cfg.warmup_minutes * 60, lambda: s.updates() >= 1, progress=True):
                raise Aborted(f"no learner update within {cfg.warmup_minutes:g} minutes")
            # 2. the faults, at their scheduled times
            workers = [w.name for w in launcher.workers]
            s.t0 = time.monotonic()
            s.auditor.judge_memory_from_now()
            for fault in plan_faults(cfg.seed, cfg.minutes * 60, cfg.mean_gap, workers):
                s.wait(s.t0 + fault.at - time.monotonic(), progress=True)
                s.apply(fault)
            s.wait(s.t0 + cfg.minutes * 60 - time.monotonic(), progress=True)
            print("faults over; draining ...", flush=True)
            # 3. drain: everyone up, training on, fault-era work settled
            updates_at_end = s.updates()
            drain = s.drain()
            resumed = s.updates() > updates_at_end
        except Aborted as e:
            aborted = str(e)
            print(f"! aborted: {aborted}", flush=True)
        # 4. stop (SIGTERM: the learner commits), then read what Redis and the run log hold
        codes = launcher.stop_workers()
        ledger, records = None, read_runlog(s.runlog)
        if launcher.redis.proc.poll() is None:
            s.auditor.stop()  # the last entries copied; trimmed ones are put back below
            injected = {m for markers in s.poison.values() for m in markers}
            r = launcher.redis.client()
            try:
                ledger, records = read_ledger(
                    r,
                    s.keys,
                    launcher.run_dir / "learner",
                    n_rollouts,
                    injected,
                    POISON_RE,
                    merge=s.auditor.merged,
                )
            finally:
                r.close()
    finally:
        launcher.stop()  # whatever happened: no worker or redis-server outlives the bench
    return Outcome(
        command=command,
        run_dir=launcher.run_dir,
        faults=s.applied,
        restarts={w.name: w.restarts for w in launcher.workers},
        exit_codes=codes,
        drain=drain,
        resumed=resumed,
        ledger=ledger,
        accuracy=accuracy(records),
        memory=s.auditor.memory,
        aborted=aborted,
    )


def rollouts_per_prompt(data: dict, worker_sets: list[str]) -> int:
    """actor.rollout.n as the actors see it (config file, then `--set`)."""
    n = data.get("actor", {}).get("rollout", {}).get("n", RolloutConfig.n)
    for item in worker_sets:
        key, _, raw = item.partition("=")
        if key == "actor.rollout.n":
            n = parse_set_value(raw)
    return int(n)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser("gpo bench chaos", __doc__)
    p.add_argument("--minutes", type=float, default=ChaosConfig.minutes, help="fault phase")
    p.add_argument("--seed", type=int, default=ChaosConfig.seed, help="fault schedule seed")
    p.add_argument("--mean-gap", type=float, default=ChaosConfig.mean_gap, help="s between faults")
    p.add_argument("--warmup-minutes", type=float, default=ChaosConfig.warmup_minutes)
    p.add_argument("--drain-minutes", type=float, default=ChaosConfig.drain_minutes)
    p.add_argument("--config", default=str(ROOT / "ops" / "configs" / "demo.toml"))
    p.add_argument("--runs-dir", help="parent of the run directory (overrides launch.runs_dir)")
    p.add_argument("--run-id", help="run id (default chaos-<date>-<time>); must be new")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, as for gpo launch (launch.* here, the rest to workers)",
    )
    args = p.parse_args(argv)
    cfg = ChaosConfig(
        minutes=args.minutes,
        seed=args.seed,
        mean_gap=args.mean_gap,
        warmup_minutes=args.warmup_minutes,
        drain_minutes=args.drain_minutes,
    )
    try:
        overrides, worker_sets = split_sets(args.set)
        data = apply_sets(load_toml(args.config), worker_sets)
        model = base_model(data)
        launch = launch_table(data, overrides, model)
        launch |= {"max_minutes": 0.0, "max_updates": 0, "report": False}
        if args.runs_dir:
            launch["runs_dir"] = args.runs_dir
        launch_cfg = from_mapping(LaunchConfig, launch, "launch")
        validate_roles(data, worker_sets, model)
    except ConfigError as e:
        print(f"gpo bench chaos: error: {e}", file=sys.stderr)
        return 2
    run_id = args.run_id or time.strftime("chaos-%Y%m%d-%H%M%S")
    if (Path(launch_cfg.runs_dir).resolve() / run_id).exists():
        print(
            f"gpo bench chaos: error: run {run_id} exists; its ledger would mix runs",
            file=sys.stderr,
        )
        return 2
    # the streams are trimmed as in any run: the audit group (ops/bench/chaos_audit.py) keeps copies
    sets = [*worker_sets, "learner.log_sample_ids=true"]
    launcher = Launcher(launch_cfg, Path(args.config).resolve(), run_id, None, sets, model)
    command = " ".join(["gpo", "bench", "chaos", *(shlex.quote(a) for a in argv)])
    outcome = soak(launcher, cfg, rollouts_per_prompt(data, worker_sets), command)
    body = render(outcome)
    print("\n" + body)
    (outcome.run_dir / "chaos.json").write_text(json.dumps(summary(outcome), indent=2))
    if args.write_results:
        print(f"wrote section chaos of {write_section('chaos', body)}")
    return 1 if outcome.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
