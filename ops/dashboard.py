"""The Grafana dashboard of a gpo run, generated from one list of panels.

    python -m ops.dashboard > ops/grafana/gpo-dashboard.json

Every metric family the processes export has a panel (tests/unit/ops/test_dashboard.py checks
it against the live registries), including the adapter version of every actor and estimator
next to the learner's, so an actor stuck on an old policy stands out. Import the JSON in
Grafana and pick the Prometheus data source that scrapes ops/prometheus.yml.
"""

from __future__ import annotations

import json
import sys

# (title, PromQL expressions, unit); `rate()` on counters, quantiles on histograms.
PANELS: list[tuple[str, list[str], str]] = [
    # learning
    (
        "Held-out pass@1 (shown once evaluated)",
        [
            "gpo_learner_heldout_pass_at_1_ratio and on() (gpo_learner_heldout_evaluations_total > 0)",
        ],
        "percentunit",
    ),
    ("Batch reward (learner)", ["gpo_learner_reward_mean"], "none"),
    (
        "Reward of rollouts (actor)",
        ["rate(gpo_actor_reward_sum[1m]) / rate(gpo_actor_reward_count[1m])"],
        "none",
    ),
    ("PPO updates / s", ["rate(gpo_learner_updates_total[1m])"], "ops"),
    (
        "PPO losses",
        ["gpo_learner_loss", "gpo_learner_policy_loss", "gpo_learner_value_loss"],
        "none",
    ),
    ("KL", ["gpo_learner_kl", "gpo_learner_approx_kl"], "none"),
    ("Clip fraction", ["gpo_learner_clip_fraction"], "percentunit"),
    ("Entropy (nats / token)", ["gpo_learner_entropy_nats"], "none"),
    ("Gradient norm", ["gpo_learner_grad_norm"], "none"),
    (
        "Optimizer steps skipped (non-finite loss or gradient) / s",
        ["rate(gpo_learner_nonfinite_steps_skipped_total[5m])"],
        "ops",
    ),
    (
        "Trained samples / s by kind",
        ["sum by (kind) (rate(gpo_learner_samples_trained_total[1m]))"],
        "ops",
    ),
    (
        "Trained tokens / s",
        ["rate(gpo_learner_tokens_trained_total[1m])", "gpo_learner_tokens_per_second"],
        "ops",
    ),
    (
        "Policy lag of trained samples (p50, p95)",
        [
            "histogram_quantile(0.5, rate(gpo_learner_policy_lag_versions_bucket[5m]))",
            "histogram_quantile(0.95, rate(gpo_learner_policy_lag_versions_bucket[5m]))",
        ],
        "none",
    ),
    (
        "Samples dropped (stale, duplicate, surplus resets) / s",
        [
            "rate(gpo_learner_samples_dropped_stale_total[1m])",
            "rate(gpo_learner_samples_dropped_duplicate_total[1m])",
            "rate(gpo_learner_samples_dropped_surplus_total[1m])",
        ],
        "ops",
    ),
    (
        "Batch composition: reset share, and batches short of a kind / s",
        [
            "gpo_learner_batch_reset_share_ratio",
            "sum by (kind) (rate(gpo_learner_batches_short_total[1m]))",
        ],
        "none",
    ),
    (
        "Update and checkpoint seconds (p95)",
        [
            "histogram_quantile(0.95, rate(gpo_learner_update_seconds_bucket[5m]))",
            "histogram_quantile(0.95, rate(gpo_learner_checkpoint_seconds_bucket[5m]))",
        ],
        "s",
    ),
    # policy versions: a stuck actor is visible here
    (
        "Adapter version per process",
        [
            "gpo_learner_adapter_version",
            "gpo_actor_policy_version",
            "gpo_estimator_policy_version",
        ],
        "none",
    ),
    (
        "Versions behind the newest",
        ["gpo_actor_policy_lag_versions", "gpo_estimator_policy_lag_versions"],
        "none",
    ),
    (
        "Loaded adapter (version, sha256)",
        [
            "gpo_actor_adapter_info",
            "gpo_estimator_adapter_info",
            "gpo_learner_adapter_info",
        ],
        "none",
    ),
    (
        "Adapter publish / fetch / load seconds (p95)",
        [
            "histogram_quantile(0.95, sum by (le, job, name) "
            "(rate({__name__=~'gpo_.*_adapter_publish_seconds_bucket'}[5m])))",
            "histogram_quantile(0.95, sum by (le, job, name) "
            "(rate({__name__=~'gpo_.*_adapter_fetch_seconds_bucket'}[5m])))",
            "histogram_quantile(0.95, sum by (le, job, name) "
            "(rate({__name__=~'gpo_.*_adapter_load_seconds_bucket'}[5m])))",
        ],
        "s",
    ),
    (
        "Adapters rejected / published bytes",
        [
            "sum by (reason) (rate({__name__=~'gpo_.*_adapter_rejected_total'}[5m]))",
            "rate({__name__=~'gpo_.*_adapter_published_bytes_total'}[5m])",
        ],
        "none",
    ),
    (
        "Adapter bytes / s written to Redis, and fetched from it",
        [
            "rate({__name__=~'gpo_.*_adapter_written_bytes_total'}[5m])",
            "sum by (job) (rate({__name__=~'gpo_.*_adapter_fetched_bytes_total'}[5m]))",
        ],
        "Bps",
    ),
    (
        "Adapter versions by source (host cache hit, fetched, bad cached file)",
        ["sum by (outcome) (rate({__name__=~'gpo_.*_adapter_host_cache_total'}[5m]))"],
        "none",
    ),
    (
        "Time refusing work while lagging",
        ["rate(gpo_actor_policy_lag_wait_seconds_total[1m])"],
        "percentunit",
    ),
    # generation
    ("Generated tokens / s per actor", ["rate(gpo_actor_generated_tokens_total[1m])"], "ops"),
    (
        "MC tokens generated / s per estimator",
        ["rate(gpo_estimator_generated_tokens_total[1m])"],
        "ops",
    ),
    (
        "Generate seconds (p50, p95)",
        [
            "histogram_quantile(0.5, rate(gpo_actor_generate_seconds_bucket[5m]))",
            "histogram_quantile(0.95, rate(gpo_actor_generate_seconds_bucket[5m]))",
        ],
        "s",
    ),
    ("Trajectories / s by kind", ["sum by (kind) (rate(gpo_actor_trajectories_total[1m]))"], "ops"),
    ("Wrong-task messages", ["rate(gpo_actor_wrong_task_total[5m])"], "ops"),
    ("vLLM prefix-cache hit ratio", ["gpo_engine_prefix_cache_hit_ratio"], "percentunit"),
    (
        "vLLM running / waiting requests",
        ["vllm:num_requests_running", "vllm:num_requests_waiting"],
        "none",
    ),
    ("vLLM KV-cache usage", ["vllm:kv_cache_usage_perc"], "percentunit"),
    # estimation
    (
        "MC rollouts / s (generated, reused as reset rollouts)",
        [
            "rate(gpo_estimator_mc_rollouts_total[1m])",
            "rate(gpo_estimator_mc_rollouts_reused_total[1m])",
        ],
        "ops",
    ),
    (
        "Seconds per trajectory (p50, p95)",
        [
            "histogram_quantile(0.5, rate(gpo_estimator_trajectory_seconds_bucket[5m]))",
            "histogram_quantile(0.95, rate(gpo_estimator_trajectory_seconds_bucket[5m]))",
        ],
        "s",
    ),
    (
        "Critical step index (p50, p90)",
        [
            "histogram_quantile(0.5, rate(gpo_estimator_critical_step_index_bucket[5m]))",
            "histogram_quantile(0.9, rate(gpo_estimator_critical_step_index_bucket[5m]))",
        ],
        "none",
    ),
    (
        "Critical step position (index / steps), p50",
        [
            "histogram_quantile(0.5, rate(gpo_estimator_critical_step_position_ratio_bucket[5m]))",
        ],
        "percentunit",
    ),
    (
        "Share without a critical step",
        [
            "rate(gpo_estimator_no_critical_step_total[5m]) / rate(gpo_estimator_trajectories_estimated_total[5m])",
        ],
        "percentunit",
    ),
    (
        "Fresh trajectories not searched (mc.targets) / s",
        ["rate(gpo_estimator_trajectories_unsearched_total[1m])"],
        "ops",
    ),
    (
        "Reset requests and samples / s",
        [
            "sum by (selection) (rate(gpo_estimator_reset_requests_total[1m]))",
            "sum by (kind) (rate(gpo_estimator_samples_total[1m]))",
        ],
        "ops",
    ),
    # transport
    (
        "Stream backlog (produced - acked)",
        ["max by (stream) ({__name__=~'gpo_.*_stream_backlog_messages'})"],
        "none",
    ),
    (
        "Messages processed / s per stream",
        [
            "sum by (stream) (rate({__name__=~'gpo_.*_messages_processed_total'}[1m]))",
        ],
        "ops",
    ),
    (
        "Messages produced / s per stream",
        [
            "sum by (stream) (rate({__name__=~'gpo_.*_messages_produced_total'}[1m]))",
        ],
        "ops",
    ),
    (
        "Redelivered / dead-lettered / handler errors",
        [
            "sum by (stream) (rate({__name__=~'gpo_.*_messages_redelivered_total'}[5m]))",
            "sum by (stream, reason) (rate({__name__=~'gpo_.*_messages_dead_lettered_total'}[5m]))",
            "sum by (stream) (rate({__name__=~'gpo_.*_handler_errors_total'}[5m]))",
            "sum by (stream) (rate({__name__=~'gpo_.*_lease_lost_total'}[5m]))",
        ],
        "ops",
    ),
    (
        "Backpressure wait (share of time)",
        [
            "sum by (stream) (rate({__name__=~'gpo_.*_backpressure_wait_seconds_total'}[1m]))",
        ],
        "percentunit",
    ),
    (
        "Redis reconnects and group resets",
        [
            "sum by (process) (rate({__name__=~'gpo_.*_redis_reconnects_total'}[5m]))",
            "sum by (stream) (rate({__name__=~'gpo_.*_group_resets_total'}[5m]))",
        ],
        "ops",
    ),
    (
        "Redis memory: entries trimmed / writes refused at maxmemory",
        [
            "sum by (stream) (rate({__name__=~'gpo_.*_stream_trimmed_total'}[5m]))",
            "sum by (process) (rate({__name__=~'gpo_.*_redis_oom_waits_total'}[5m]))",
        ],
        "ops",
    ),
    ("Targets up", ['up{job="gpo"}'], "none"),
]


def dashboard() -> dict:
    panels = []
    for i, (title, exprs, unit) in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "targets": [
                    {
                        "refId": chr(ord("A") + j),
                        "expr": e,
                        "legendFormat": "{{name}} {{stream}} {{kind}}",
                    }
                    for j, e in enumerate(exprs)
                ],
            }
        )
    return {
        "title": "GPO training run",
        "uid": "gpo-run",
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                },
            ]
        },
        "panels": panels,
    }


def main(argv: list[str] | None = None) -> int:
    json.dump(dashboard(), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
