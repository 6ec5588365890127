"""Bytes per adapter version: what one learner update makes Redis store and every host read.

    gpo bench adapter-bytes [--model DIR | --shape smollm2] [--config ops/configs/demo.toml]
                            [--updates 6] [--rank R] [--targets q_proj,v_proj,...]
                            [--batch-size B] [--max-new-tokens T] [--write-results]

The learner's own path, on one private redis-server: the base policy (`gpo bootstrap`'s,
cached, unless `--model`; `--shape smollm2`: a random Llama of SmolLM2-135M's shape over the
tiny character vocabulary, for an adapter of realistic size) with a fresh LoRA of the
config's `[learner.lora]` (or `--rank`, `--targets`), the batch `gpo bench learner` builds (samples made as actors and estimators
make them), `--updates` PPO updates (`learner.train.ppo_update` with the config's loss and
optimizer), and after each one `Policy.export_adapter` and `AdapterPublisher.publish`, as
the learner publishes. Once per publish dtype (`learner.lora.publish_dtype`: fp32, bf16),
from the same start and on the same batch, it records each version's bytes and the bytes
its publish wrote (a chunk whose bytes equal one of the version before is not written
again), then publishes the last weights once more unchanged (what a republish costs).

Each host fetches a version once (the host cache), so the bytes per version are also what
each host reads from Redis; without the cache each process on it reads them.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ops.harness import console_table, markdown_table, parser, write_bench_section
from protocol.adapters import AdapterMetrics, AdapterPublisher, chunk_cuts
from protocol.config import RedisConfig
from protocol.metrics import Metrics
from protocol.streams import Keys, Link

MiB = 2**20
DTYPES = ("fp32", "bf16")
SHAPES = {
    "smollm2": dict(
        hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, intermediate_size=1536
    )
}
"""Random stand-ins of a real model's shape (`--shape`): the LoRA's size is the real one's."""


@dataclass(frozen=True, slots=True)
class Row:
    """One publish dtype over the updates."""

    dtype: str
    tensors: int
    chunks: int
    version_bytes: int
    """Bytes of one version (the same for every version of this dtype)."""
    written_bytes: list[int]
    """Bytes each update's publish wrote, in order (the first writes everything)."""
    republish_bytes: int
    """Bytes written by publishing the last weights again, unchanged."""

    @property
    def written_after_first(self) -> float:
        """Median bytes written per update after the first."""
        return statistics.median(self.written_bytes[1:] or self.written_bytes)


HEADER = [
    "publish dtype",
    "LoRA tensors",
    "chunks",
    "MiB per version",
    "MiB written per update",
    "written / version",
    "MiB written by an unchanged republish",
]


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    return [
        [
            r.dtype,
            str(r.tensors),
            str(r.chunks),
            f"{r.version_bytes / MiB:.3f}",
            f"{r.written_after_first / MiB:.3f}",
            f"{r.written_after_first / r.version_bytes:.0%}",
            f"{r.republish_bytes / MiB:.3f}",
        ]
        for r in rows
    ]


async def publish_versions(url: str, run_id: str, blobs: list[bytes], lora: dict) -> list[int]:
    """Publish `blobs` as versions 1, 2, ... through one AdapterPublisher; the bytes each wrote."""
    metrics = AdapterMetrics(Metrics("bench"))
    link = Link(RedisConfig(url=url, run_id=run_id, socket_timeout=60))
    publisher = AdapterPublisher(link, Keys(run_id), "bench", metrics=metrics)
    written, before = [], 0.0
    try:
        for version, blob in enumerate(blobs, start=1):
            await publisher.publish(version, blob, lora)
            total = metrics.written_bytes._value.get()
            written.append(int(total - before))
            before = total
    finally:
        await link.close()
    return written


def measure(policy_for, samples, learner, updates: int, url: str) -> list[Row]:
    """`updates` PPO updates per publish dtype from the same start; one Row each."""
    from learner.train import make_optimizer, ppo_update

    rows = []
    for dtype in DTYPES:
        cfg = replace(learner, lora=replace(learner.lora, publish_dtype=dtype))
        policy = policy_for(cfg)
        optimizer = make_optimizer(policy, cfg)
        blobs, lora = [], {}
        for step in range(updates):
            ppo_update(policy, optimizer, samples, cfg, step)
            blob, lora = policy.export_adapter()
            blobs.append(blob)
            print(f"  {dtype}: update {step + 1}/{updates}", flush=True)
        written = asyncio.run(publish_versions(url, f"bytes-{dtype}", [*blobs, blobs[-1]], lora))
        rows.append(
            Row(
                dtype,
                tensors=sum(1 for _ in policy.trainable()),
                chunks=len(chunk_cuts(blobs[-1])),
                version_bytes=len(blobs[-1]),
                written_bytes=written[:-1],
                republish_bytes=written[-1],
            )
        )
    return rows


def reading(rows: Sequence[Row], updates: int) -> str:
    by = {r.dtype: r for r in rows}
    fp32, bf16 = by["fp32"], by["bf16"]
    parts = [
        f"One version of this adapter ({fp32.tensors} LoRA tensors) is "
        f"{fp32.version_bytes / MiB:.3f} MiB in fp32 and {bf16.version_bytes / MiB:.3f} MiB "
        f"in bf16 ({bf16.version_bytes / fp32.version_bytes:.2f}x).",
        f"Over {updates} PPO updates, a publish after the first wrote a median "
        f"{fp32.written_after_first / fp32.version_bytes:.0%} (fp32) and "
        f"{bf16.written_after_first / bf16.version_bytes:.0%} (bf16) of the version's bytes: "
        "skipping unchanged chunks saves what the update left unchanged, and an update of "
        "LoRA moves every tensor whose gradient is not zero (AdamW). Publishing the same "
        f"weights again wrote {fp32.republish_bytes} bytes (fp32).",
        "With the host cache each host reads each version once from Redis, so Redis egress "
        "per version is these bytes times hosts, not times processes.",
    ]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    from ops.bench.learner_update import DEMO_CONFIG, load_configs, system_batch

    p = parser("gpo bench adapter-bytes", __doc__)
    p.add_argument("--model", help="base model directory (default: gpo bootstrap's, cached)")
    p.add_argument("--shape", choices=sorted(SHAPES), help="a random model of this shape instead")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="TOML with [learner], [actor]")
    p.add_argument("--updates", type=int, default=6, help="PPO updates per publish dtype")
    p.add_argument("--rank", type=int, help="override learner.lora.rank")
    p.add_argument("--targets", help="override learner.lora.target_modules (commas)")
    p.add_argument("--batch-size", type=int, help="override learner.batch_size")
    p.add_argument("--max-new-tokens", type=int, help="override actor.rollout.max_new_tokens")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.updates < 2:
        p.error("--updates must be at least 2 (the first publish writes everything)")
    if args.shape and args.model:
        p.error("--model and --shape exclude each other")
    load_configs(args, args.model or "bootstrap")  # a config mistake: one line, before a build

    from learner.policy import build_policy
    from ops.redis_server import RedisServer
    from ops.tiny_policy.bootstrap import BootstrapConfig, bootstrap

    tmp = tempfile.TemporaryDirectory(prefix="gpo-adapter-bytes-")
    if args.shape:
        from ops.tiny_policy.tiny_model import TinyModelConfig, build_tiny_model_dir

        shape = TinyModelConfig(**SHAPES[args.shape])
        model = str(build_tiny_model_dir(Path(tmp.name) / args.shape, shape))
    else:
        model = args.model or str(bootstrap(BootstrapConfig()))
    learner, samples = system_batch(args, model)
    lora = learner.lora
    if args.rank:
        lora = replace(lora, rank=args.rank)
    if args.targets:
        lora = replace(lora, target_modules=[t for t in args.targets.split(",") if t])
    learner = replace(learner, lora=lora)  # the batch does not depend on the adapter
    print(f"model {model}; {len(samples)} samples; LoRA rank {lora.rank} on {lora.target_modules}")
    with tmp:
        server = RedisServer(Path(tmp.name) / "redis", extra=("--maxmemory", "0")).start()
        try:
            rows = measure(build_policy, samples, learner, args.updates, server.url)
        finally:
            server.stop()
    print("\n" + console_table(HEADER, table_rows(rows)))
    text = reading(rows, args.updates)
    print("\n" + text)
    if args.write_results:
        write_bench_section("adapter-bytes", argv, markdown_table(HEADER, table_rows(rows)), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
