"""Build the tiny built-in base policies: character-level Llamas trained by SFT on a task.

`bootstrap(config)` returns a directory holding a `save_pretrained` model and tokenizer and a
`bootstrap.json` record (measured pass@1, seconds, step error histogram). Two tasks:
- `arithmetic` (the default): trained only until its held-out pass@1 at temperature 1 first
  enters `[band_low, band_high]`: good enough to sometimes solve a problem, bad enough to
  leave room for RL, with errors spread over the steps;
- `pivot` (`actors.tasks.pivot`): trained until, on held-out problems, the easy steps are
  right at least `easy_step_min` of the time and the pivot step within
  `[pivot_band_low, pivot_band_high]`, so that failures are systematic at the pivot rather
  than slips; the per-step rates go into the record.
If an evaluation overshoots its band, training rewinds to the last snapshot below it and
evaluates more often.

Cost and determinism: about 1-3 minutes on 2 CPU cores with the defaults; the same config
gives the same weights (fixed thread count, own RNG for data, seeded sampling for
evaluation). The result is cached under `cache_dir/<hash of the config>`, so a second call
returns at once; the directory is written under a temporary name and renamed into place, so
concurrent callers never see a half-written policy.

CLI: `gpo bootstrap [--config FILE] [--field-name VALUE ...]` (the `[bootstrap]` table of the
TOML file, then flags, override the `BootstrapConfig` defaults); prints the directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from actors.tasks import arithmetic, pivot
from ops.tiny_policy.sft import TASK_MODULES, model_config, train
from ops.tiny_policy.tokenizer import build_char_tokenizer
from protocol.config import ConfigError, from_mapping, load_toml

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
"""Part of the cache key; bump when the recipe changes what a config produces."""
TASK_SPECS = {
    "arithmetic": "actors.tasks.arithmetic:Arithmetic",
    "pivot": "actors.tasks.pivot:Pivot",
}
"""The tasks a policy can be trained on (the spec is recorded in bootstrap.json)."""
"""Each task's module: its `ALPHABET` and canonical `solution`."""
PIVOT_FIELDS = (
    "min_steps",
    "max_steps",
    "pivot_digits",
    "pivot_position",
    "easy_step_min",
    "pivot_band_low",
    "pivot_band_high",
)
"""Fields that only the pivot task reads (they key the cache of pivot policies only)."""


@dataclass(frozen=True)
class BootstrapConfig:
    """How to build the tiny base policy (every field except `cache_dir` keys the cache)."""

    cache_dir: str = "~/.cache/gpo/bootstrap"
    """Directory under which each config's policy is stored (in `<cache_dir>/<hash>`)."""
    seed: int = 0
    """Seed of the model init, the task's problem stream, the batches and the evaluation."""
    task: str = "arithmetic"
    """The task: `arithmetic` or `pivot`."""
    min_ops: int = 2
    """Task difficulty: fewest operations per problem."""
    max_ops: int = 4
    """Task difficulty: most operations per problem."""
    max_operand: int = 50
    """Task difficulty: operands are drawn from [1, max_operand]."""
    max_value: int = 99
    """Task difficulty: running values stay in [0, max_value]."""
    n_train: int = 20000
    """Number of distinct training problems for SFT."""
    min_steps: int = 8
    """Pivot task: fewest operations per chain."""
    max_steps: int = 12
    """Pivot task: most operations per chain."""
    pivot_digits: int = 1
    """Pivot task: digits of the pivot's factor (1 or 2)."""
    pivot_position: str = "random"
    """Pivot task: `early`, `middle`, `late` or `random`."""
    easy_step_min: float = 0.97
    """Pivot task: stop only once easy steps, when reached, are right at least this often."""
    pivot_band_low: float = 0.15
    """Pivot task: stop once the pivot step, when reached, is right at least this often."""
    pivot_band_high: float = 0.5
    """Pivot task: a pivot accuracy above this is an overshoot: rewind, evaluate more often."""
    hidden_size: int = 128
    """Model width."""
    num_layers: int = 2
    """Number of transformer blocks."""
    num_heads: int = 4
    """Attention heads per block."""
    intermediate_size: int = 256
    """MLP width."""
    batch_size: int = 32
    """SFT sequences per optimizer step."""
    learning_rate: float = 3e-3
    """AdamW peak learning rate (linear warmup, then constant)."""
    warmup_steps: int = 50
    """Optimizer steps of linear learning-rate warmup."""
    max_train_steps: int = 4000
    """Stop after this many optimizer steps even if the band was never reached."""
    max_train_seconds: float = 300.0
    """Stop after this much training wall time even if the band was never reached, in s."""
    eval_every: int = 100
    """Optimizer steps between held-out evaluations (halved after an overshoot, min 10)."""
    eval_below_loss: float = 0.25
    """Skip evaluations while the smoothed training loss is above this (far from the band)."""
    eval_prompts: int = 200
    """Held-out prompts sampled once each (temperature 1) to measure pass@1."""
    band_low: float = 0.2
    """Stop once held-out pass@1 is at least this."""
    band_high: float = 0.6
    """An evaluation above this is an overshoot: rewind and evaluate more often."""
    num_threads: int = 1
    """torch CPU threads while training (part of determinism). One, because these matmuls are
    too small to gain from a second thread, and two threads collapse when other processes
    share the cores (measured: 0.13 s vs 1-3 s per step on a loaded 2-core machine)."""

    def __post_init__(self) -> None:
        if self.task not in TASK_SPECS:
            raise ValueError(f"task must be one of {sorted(TASK_SPECS)}, got {self.task!r}")
        if not 0.0 <= self.band_low <= self.band_high <= 1.0:
            raise ValueError("need 0 <= band_low <= band_high <= 1")
        if not 0.0 <= self.pivot_band_low <= self.pivot_band_high <= 1.0:
            raise ValueError("need 0 <= pivot_band_low <= pivot_band_high <= 1")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        self.load_task()  # the task's own checks, now

    def load_task(self) -> arithmetic.Arithmetic | pivot.Pivot:
        """The task this config trains on."""
        cls = pivot.Pivot if self.task == "pivot" else arithmetic.Arithmetic
        return cls(**self.task_options())

    @property
    def task_spec(self) -> str:
        """`load_task(task_spec, **task_options())` rebuilds the task."""
        return TASK_SPECS[self.task]

    def task_options(self) -> dict:
        """Options for `load_task(task_spec, **options)` that rebuild the same task."""
        common = {
            "seed": self.seed,
            "n_train": self.n_train,
            "n_heldout": max(self.eval_prompts, 500),
        }
        if self.task == "pivot":
            return {
                **common,
                "min_steps": self.min_steps,
                "max_steps": self.max_steps,
                "pivot_digits": self.pivot_digits,
                "pivot_position": self.pivot_position,
            }
        return {
            **common,
            "min_ops": self.min_ops,
            "max_ops": self.max_ops,
            "max_operand": self.max_operand,
            "max_value": self.max_value,
        }

    @property
    def max_new_tokens(self) -> int:
        """Longest completion sampled in evaluation: a full canonical solution fits."""
        if self.task == "pivot":
            return 12 * self.max_steps + 8  # lines like "25*13=25\n", then "A: 25"
        return 48

    def cache_key(self) -> str:
        """Hash of every field that changes the result (not `cache_dir`; for arithmetic,
        not the pivot task's fields either, so its key is what it was before they existed)."""
        fields = dataclasses.asdict(self)
        fields.pop("cache_dir")
        if self.task == "arithmetic":
            for name in ("task", *PIVOT_FIELDS):
                fields.pop(name)
        blob = json.dumps({"recipe": RECIPE_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def in_band(self, accuracy: float, steps: dict | None) -> bool:
        """The stopping rule: pass@1 in its band (arithmetic), or the per-step bands (pivot)."""
        if self.task == "pivot":
            return (
                steps["easy_rate"] >= self.easy_step_min
                and self.pivot_band_low <= steps["pivot_rate"] <= self.pivot_band_high
            )
        return self.band_low <= accuracy <= self.band_high

    def overshoot(self, accuracy: float, steps: dict | None) -> bool:
        """Past the band: training went too far (rewind and evaluate more often)."""
        if self.task == "pivot":
            return steps["pivot_rate"] > self.pivot_band_high
        return accuracy > self.band_high


def bootstrap(config: BootstrapConfig) -> Path:
    """Return the directory of the policy for `config`, training it first if not cached."""
    root = Path(config.cache_dir).expanduser()
    target = root / config.cache_key()
    if (target / "bootstrap.json").is_file():
        if json.loads((target / "bootstrap.json").read_text()).get("in_band", True):
            return target
        # Out of band means the wall-clock cap cut training short (a loaded machine): the
        # recipe itself is deterministic, so try again rather than serve a useless policy.
        log.warning("cached policy %s is outside the accuracy band; training it again", target)
        shutil.rmtree(target, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        _build(config, staging)
        try:
            os.replace(staging, target)  # atomic; fails if another caller finished first
        except OSError:
            if not (target / "bootstrap.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _build(config: BootstrapConfig, out: Path) -> None:
    """Train the policy for `config` and save model, tokenizer and record into `out`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        start = time.monotonic()
        task = config.load_task()
        tokenizer = build_char_tokenizer(TASK_MODULES[config.task].ALPHABET)
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(model_config(config, tokenizer))
        result = train(model, tokenizer, task, config)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        record = {
            "task": config.task_spec,
            "task_options": config.task_options(),
            "config": dataclasses.asdict(config),
            "cache_key": config.cache_key(),
            "seconds": round(time.monotonic() - start, 1),
            **result,
        }
        (out / "bootstrap.json").write_text(json.dumps(record, indent=2) + "\n")
    finally:
        torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    """`gpo bootstrap`: build (or reuse) the policy and print its directory and record."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", help="TOML file; its [bootstrap] table sets config fields")
    known, _ = pre.parse_known_args(argv)
    parser = argparse.ArgumentParser(
        prog="gpo bootstrap", parents=[pre], description=__doc__.split("\n")[0]
    )
    for f in dataclasses.fields(BootstrapConfig):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, dest=f.name, type=type(f.default), default=f.default)
    try:
        # the [bootstrap] table: a missing file, bad TOML, an unknown key or a wrong type is
        # one line before anything is built
        table = load_toml(known.config).get("bootstrap", {}) if known.config else {}
        from_mapping(BootstrapConfig, table, "bootstrap")
        parser.set_defaults(**table)
        args = vars(parser.parse_args(argv))
        args.pop("config")
        config = from_mapping(BootstrapConfig, args, "bootstrap")
    except ConfigError as e:
        print(f"gpo bootstrap: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    path = bootstrap(config)
    record = json.loads((path / "bootstrap.json").read_text())
    print(path)
    print(
        f"pass@1 {record['pass_at_1']:.3f} (in band: {record['in_band']}), "
        f"{record['train_steps']} steps, {record['seconds']} s to build"
    )
    return 0
