"""The learner's Prometheus metrics (`gpo_learner_*`) and its run log (JSON lines).

One emission point per update (`LearnerMetrics.update`), so the loop stays a table of
contents. The run log gets one record per event (`resume`, `update`, `eval`, `checkpoint`;
`surplus`: reset samples dropped by the batch composition; with `log_sample_ids`, `stale`:
the ids of samples dropped by the staleness rule) with the
seconds since the process started, enough to plot pass@1 against updates and against wall
time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from protocol.metrics import Metrics
from protocol.process import UserError

LAG_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
"""Policy lag buckets, in adapter versions."""


class LearnerMetrics:
    def __init__(self, m: Metrics):
        self.updates = m.counter("updates_total", "PPO updates (optimizer-step batches) done.")
        self.samples = m.counter("samples_trained_total", "Samples trained on.", ("kind",))
        self.tokens = m.counter("tokens_trained_total", "Completion tokens trained on.")
        self.stale = m.counter(
            "samples_dropped_stale_total", "Samples dropped for exceeding max_policy_lag."
        )
        self.skipped = m.counter(
            "nonfinite_steps_skipped_total",
            "Optimizer steps skipped because the loss or the gradient was not finite.",
        )
        self.surplus = m.counter(
            "samples_dropped_surplus_total",
            "Reset samples dropped because the buffer was full of resets while the batch "
            "composition still waited for fresh samples.",
        )
        self.short = m.counter(
            "batches_short_total",
            "Updates whose batch fell short of the configured composition in one kind (the "
            "other kind filled it).",
            ("kind",),
        )
        self.reset_share = m.gauge(
            "batch_reset_share_ratio", "Share of reset samples in the last update's batch."
        )
        self.duplicates = m.counter(
            "samples_dropped_duplicate_total", "Samples dropped because their id was trained."
        )
        self.lag = m.histogram(
            "policy_lag_versions",
            "Versions between a trained sample's policy and the learner's.",
            buckets=LAG_BUCKETS,
        )
        self.update_seconds = m.histogram("update_seconds", "Wall time of one PPO update.")
        self.checkpoint_seconds = m.histogram(
            "checkpoint_seconds", "Wall time of writing one checkpoint."
        )
        self.tokens_per_second = m.gauge(
            "tokens_per_second", "Trained completion tokens per second of the last update."
        )
        self.version = m.gauge("adapter_version", "Adapter version of the current policy.")
        self.adapter = m.info("adapter", "Current adapter version and sha256 prefix.")
        self.reward = m.gauge("reward_mean", "Mean outcome reward of the last batch.")
        self.heldout = m.gauge("heldout_pass_at_1_ratio", "Held-out pass@1 at temperature 1.")
        self.evaluations = m.counter(
            "heldout_evaluations_total", "Held-out evaluations done (pass@1 is 0 until one is)."
        )
        self.stats = {
            name: m.gauge(name, doc)
            for name, doc in (
                ("loss", "Total PPO loss of the last update (token mean)."),
                ("policy_loss", "Clipped surrogate loss of the last update."),
                ("value_loss", "Clipped value loss of the last update (gae mode)."),
                ("kl", "k3 KL to the reference policy, last update."),
                ("approx_kl", "k3 KL from pi_old to pi, last update."),
                ("clip_fraction", "Share of tokens whose ratio clip was binding, last update."),
                ("entropy_nats", "Mean policy entropy per trained token, last update."),
                ("grad_norm", "Mean gradient norm before clipping, last update."),
            )
        }

    def update(
        self,
        stats: dict[str, float],
        kinds: list[str],
        lags: list[int],
        secs: float,
        shortfall: str | None = None,
    ):
        self.updates.inc()
        self.skipped.inc(stats.get("skipped_steps", 0.0))
        self.reset_share.set(sum(k == "reset" for k in kinds) / max(len(kinds), 1))
        if shortfall:
            self.short.labels(shortfall).inc()
        for k in kinds:
            self.samples.labels(k).inc()
        for lag in lags:
            self.lag.observe(lag)
        self.tokens.inc(stats["tokens"])
        self.update_seconds.observe(secs)
        self.tokens_per_second.set(stats["tokens"] / max(secs, 1e-9))
        self.reward.set(stats["reward_mean"])
        for name, gauge in self.stats.items():
            gauge.set(stats["entropy" if name == "entropy_nats" else name])

    def published(self, version: int, sha256: str) -> None:
        self.version.set(version)
        self.adapter.info({"version": str(version), "sha256": sha256[:12]})


class RunLog:
    """Appends JSON records to a file, one per line, flushed each time; with `tensorboard`,
    the numbers of `update` and `eval` records also go to TensorBoard event files there."""

    def __init__(self, path: str | Path, tensorboard: str | Path = ""):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.board = open_board(tensorboard) if tensorboard else None

    def write(self, event: str, **fields) -> None:
        record = {"event": event, "t": round(time.monotonic() - self.start, 3), **fields}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None and event in SCALAR_EVENTS:
            for name, value in fields.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.board.add_scalar(f"{event}/{name}", value, global_step=fields["step"])
            self.board.flush()


SCALAR_EVENTS = ("update", "eval")
"""Run-log events whose numbers are TensorBoard scalars (against their update step)."""


def open_board(directory: str | Path):
    """A TensorBoard writer, or a clear error when the optional package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "learner.tensorboard_dir needs the tensorboard package: pip install 'gpo[tensorboard]'"
        ) from None
    return SummaryWriter(log_dir=str(directory))
