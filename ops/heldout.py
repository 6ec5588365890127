"""`gpo eval`: held-out pass@1 of a base model, optionally with a LoRA adapter.

    gpo eval --model M [--adapter DIR] [--task arithmetic] [--task-option KEY=VALUE ...]
             [--prompts 500] [--seed S] [--json]

The number is the learner's own held-out evaluation (`learner.evaluate.heldout_pass_at_1`):
the first `--prompts` prompts of the task's held-out split, one sample each at temperature 1
(no top-k, no top-p), scored by the task's verifier; sampling is seeded by `--seed`, so the
same weights and flags give the same number. The defaults (48 new tokens, batches of 100)
are those of the demo config's `[learner]` evaluation.

`--model bootstrap` is the tiny base policy (`gpo bootstrap`, built on first use, cached);
with a model directory that holds a `bootstrap.json`, the task is built with the options the
policy was trained on, so "held-out" means the same prompts it never saw.

`--adapter DIR` takes the adapter formats the project writes:
- a peft adapter directory (`adapter_config.json`, `adapter_model.safetensors`): what
  `gpo offline train` writes and what the vLLM engine unpacks per version;
- a learner checkpoint (`step-<n>/adapter.safetensors`, the bytes the learner publishes), or
  the checkpoint directory itself (its `latest`). A checkpoint has no LoRA config: rank and
  target modules are read off the tensors; alpha comes from `--lora-alpha`, else from the
  run's config (`launch.json` two levels up), else the learner default.
The adapter's tensor names must match the model's LoRA modules exactly: a wrong adapter is
refused, never half-loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ops.models import resolve_model
from protocol.config import parse_set_value
from protocol.process import UserError, cli_entry

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
CHECKPOINT_WEIGHTS, LATEST = "adapter.safetensors", "latest"


@dataclass(frozen=True, slots=True)
class EvalArgs:
    """One held-out evaluation."""

    model: str
    """Base model directory, or `bootstrap` for the tiny base policy."""
    adapter: str | None = None
    """LoRA adapter (peft directory or learner checkpoint); None evaluates the base model."""
    task: str = "arithmetic"
    """Task name or `module:Class`."""
    task_option: tuple[str, ...] = ()
    """`KEY=VALUE` options of the task (TOML values), as `run.task_options` gives them."""
    prompts: int = 500
    """Held-out prompts to score (the first n of the held-out split)."""
    seed: int = 0
    """Seed of the sampling generator."""
    max_new_tokens: int = 48
    """Longest completion, in tokens."""
    batch: int = 100
    """Prompts decoded together (part of the draw order: keep it fixed to compare)."""
    temperature: float = 1.0
    """Sampling temperature (1: the policy's own distribution)."""
    lora_alpha: float | None = None
    """LoRA alpha of a learner checkpoint (a peft directory carries its own)."""
    threads: int = 1
    """torch CPU threads (one is fastest for the tiny model on a shared machine)."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gpo eval",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = EvalArgs(model="")
    ap.add_argument("--model", required=True, help="base model directory, `bootstrap` or `smollm2`")
    ap.add_argument("--adapter", help="peft adapter directory or learner checkpoint")
    ap.add_argument("--task", default=d.task, help="task name or module:Class")
    ap.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a task option as run.task_options gives it (repeatable), e.g. max_events=2",
    )
    ap.add_argument("--prompts", type=int, default=d.prompts, help="held-out prompts")
    ap.add_argument("--seed", type=int, default=d.seed, help="sampling seed")
    ap.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    ap.add_argument("--batch", type=int, default=d.batch, help="prompts decoded together")
    ap.add_argument("--temperature", type=float, default=d.temperature)
    ap.add_argument("--lora-alpha", type=float, help="alpha of a learner checkpoint")
    ap.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return ap


def evaluate(args: EvalArgs, progress: bool = True) -> dict:
    """Held-out pass@1 of `args.model` (+ `args.adapter`); returns a JSON-ready record.

    Raises UserError for a missing model, task or adapter, or an adapter that does not fit.
    """
    from actors.tasks.base import load_task, with_tokenizer
    from learner.evaluate import heldout_pass_at_1

    if args.prompts < 1 or args.batch < 1 or args.temperature <= 0:
        raise UserError("need --prompts >= 1, --batch >= 1 and --temperature > 0")
    model_dir = find_model_dir(args.model)
    try:
        options = {**_task_options(model_dir, args.task), **_options(args.task_option)}
        task = load_task(args.task, **options)
    except ValueError as e:
        raise UserError(str(e)) from None
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        start = time.monotonic()
        policy, tokenizer = load_policy(model_dir, args.adapter, args.lora_alpha)
        heldout = list(with_tokenizer(task, tokenizer).heldout_prompts()[: args.prompts])
        if len(heldout) < args.prompts:
            raise UserError(f"task {args.task!r} has only {len(heldout)} held-out prompts")
        label = f"eval {Path(args.adapter).name if args.adapter else 'base'}"
        score = heldout_pass_at_1(
            policy,
            task,
            tokenizer,
            heldout,
            args.max_new_tokens,
            args.batch,
            args.temperature,
            args.seed,
            progress=_progress_line(label, start) if progress else None,
        )
        seconds = time.monotonic() - start
    finally:
        torch.set_num_threads(threads)
    return {
        "pass_at_1": score,
        "n": len(heldout),
        "model_dir": str(model_dir),
        "seconds": round(seconds, 1),
        **asdict(args),
    }


def find_model_dir(model: str) -> Path:
    """The base model's directory: a model name of ops/models.py (`bootstrap`, `smollm2`;
    built once, cached) or a model directory; anything else is a user error."""
    path = Path(resolve_model(model)).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"--model {model}: not a model directory (no config.json)")
    return path


def load_policy(model_dir: Path, adapter: str | None, lora_alpha: float | None = None):
    """(policy, tokenizer): the base model in fp32, with the adapter's LoRA when given."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learner.config import LearnerConfig
    from learner.policy import Policy

    lora = weights = None
    if adapter is not None:
        lora, weights = read_any_adapter(adapter, lora_alpha)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lora is not None:
        model = get_peft_model(model, lora)
    policy = Policy(model, None, LearnerConfig(model=str(model_dir)))
    if weights is not None:
        try:
            policy.load_adapter_state(weights)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"--adapter {adapter}: does not fit the model: {e}") from None
    return policy, tokenizer


def read_any_adapter(path: str, lora_alpha: float | None = None):
    """(LoraConfig, tensors under peft key names) of a peft directory or learner checkpoint."""
    from actors.engines.lora_versions import lora_config_from_dict

    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"--adapter {path}: no such directory")
    if (root / LATEST).is_file() and not (root / CHECKPOINT_WEIGHTS).is_file():
        root = root / (root / LATEST).read_text().strip()  # a learner's checkpoint directory
    try:
        if (root / PEFT_CONFIG).is_file() and (root / PEFT_WEIGHTS).is_file():
            config = json.loads((root / PEFT_CONFIG).read_text())
            return lora_config_from_dict(config), load_file(root / PEFT_WEIGHTS)
        if (root / CHECKPOINT_WEIGHTS).is_file():
            weights = load_file(root / CHECKPOINT_WEIGHTS)
            alpha = lora_alpha if lora_alpha is not None else _run_lora_alpha(root)
            return lora_config_from_dict(checkpoint_lora_config(weights, alpha)), weights
    except (OSError, ValueError, SafetensorError) as e:
        raise UserError(f"--adapter {path}: unreadable adapter: {e}") from None
    raise UserError(
        f"--adapter {path}: neither a peft adapter ({PEFT_CONFIG} + {PEFT_WEIGHTS}) "
        f"nor a learner checkpoint ({CHECKPOINT_WEIGHTS} or {LATEST})"
    )


def checkpoint_lora_config(weights: dict[str, torch.Tensor], alpha: float) -> dict:
    """The LoRA config of peft-named weights: rank from lora_A's rows, target modules from
    the names (`...self_attn.q_proj.lora_A.weight` -> `q_proj`)."""
    ranks, modules = set(), set()
    for name, t in weights.items():
        if name.endswith(".lora_A.weight"):
            ranks.add(int(t.shape[0]))
            modules.add(name.removesuffix(".lora_A.weight").rsplit(".", 1)[-1])
    if len(ranks) != 1:
        raise ValueError(f"expected one LoRA rank in the weights, found {sorted(ranks) or 'none'}")
    return {
        "r": ranks.pop(),
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(modules),
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }


def _run_lora_alpha(step_dir: Path) -> float:
    """alpha from the launch config of the run a checkpoint belongs to
    (`runs/<id>/learner/step-<n>` -> `runs/<id>/launch.json`: `[learner.lora] alpha`, or
    `[learner] lora_alpha` in the configs of runs made before the learner's tables), else the
    learner default."""
    from learner.config import LoraSettings

    launch = step_dir.parent.parent / "launch.json"
    if launch.is_file():
        config = Path(json.loads(launch.read_text()).get("config", ""))
        if config.is_file():
            with open(config, "rb") as f:
                learner = tomllib.load(f).get("learner", {})
            for alpha in (learner.get("lora", {}).get("alpha"), learner.get("lora_alpha")):
                if alpha is not None:
                    return float(alpha)
    alpha = LoraSettings.alpha
    print(f"--adapter {step_dir}: no run config found; lora alpha {alpha}", file=sys.stderr)
    return float(alpha)


def _options(items: Sequence[str]) -> dict:
    """`KEY=VALUE` flags as a dict of TOML values (a bare word is a string)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--task-option {item!r}: expected KEY=VALUE")
        out[key.strip()] = parse_set_value(raw.strip())
    return out


def _task_options(model_dir: Path, spec: str) -> dict:
    """The options a bootstrap policy's task was built with, when `spec` names that task."""
    record = model_dir / "bootstrap.json"
    if not record.is_file():
        return {}
    from actors.tasks.base import BUILTIN_TASKS

    meta = json.loads(record.read_text())
    if BUILTIN_TASKS.get(spec, spec) != meta.get("task"):
        return {}
    return dict(meta.get("task_options", {}))


def _progress_line(label: str, start: float):
    """A callback that prints `label: done/total prompts, s` to stderr about every 5 s."""
    last = [start]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 5.0 or done == total:
            last[0] = now
            print(f"{label}: {done}/{total} prompts, {now - start:.0f} s", file=sys.stderr)

    return report


def main(argv: Sequence[str] | None = None) -> int:
    def parse_and_run() -> int:
        ns = _parser().parse_args(argv)
        fields = {k: v for k, v in vars(ns).items() if k not in ("json", "quiet")}
        fields["task_option"] = tuple(fields["task_option"])
        record = evaluate(EvalArgs(**fields), progress=not ns.quiet)
        if ns.json:
            print(json.dumps(record))
        else:
            what = f"{record['model_dir']}" + (f" + {ns.adapter}" if ns.adapter else "")
            print(
                f"held-out pass@1 {record['pass_at_1']:.3f} ({record['n']} prompts, seed "
                f"{ns.seed}, temperature {ns.temperature}) of {what}; {record['seconds']} s"
            )
        return 0

    return cli_entry(parse_and_run)


if __name__ == "__main__":
    sys.exit(main())
