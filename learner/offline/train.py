"""Train a LoRA adapter on preference pairs with TRL's maintained trainers (GPO.md step 7).

Methods and their TRL implementations:
- `dpo`: `DPOTrainer`, sigmoid loss -logsigmoid(beta * ((pc - rc) - (pr - rr))); the
  reference is the base model with the adapter disabled (no second copy).
- `kto`: `KTOTrainer` on unpaired rows: each pair gives (prompt, chosen, True) and
  (prompt, rejected, False); the reference point is the batch KL estimate.
- `simpo`: `CPOTrainer` with `loss_type="simpo"`, `cpo_alpha=0`: length-normalised
  logprobs, target margin `simpo_gamma`, no reference model.
- `orpo`: `ORPOTrainer`: NLL on chosen plus beta times the odds-ratio term.

TRL is the `offline` extra (`pip install -e '.[offline]'`); it installs beside the pinned
torch, transformers and peft without changing them. The output directory is a peft adapter
(`adapter_config.json`, `adapter_model.safetensors`) that `PeftModel.from_pretrained` and
the engines' `load_adapter` read (`read_adapter`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.offline.pairs import read_pairs
from learner.offline.settings import TrainArgs


def _trainer(args: TrainArgs, model, tokenizer, rows: list[dict], common: dict):
    """The TRL trainer for `args.method` over `rows` (paired preference records)."""
    from datasets import Dataset

    lora = LoraConfig(
        r=args.lora_rank,
        lora_alpha=2 * args.lora_rank,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],  # as the online learner
        task_type="CAUSAL_LM",
    )
    paired = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    kw = dict(model=model, processing_class=tokenizer, peft_config=lora)
    if args.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        cfg = DPOConfig(beta=args.beta, loss_type=["sigmoid"], **common)
        return DPOTrainer(args=cfg, train_dataset=paired, **kw)
    if args.method == "kto":
        from trl import KTOConfig, KTOTrainer

        unpaired = Dataset.from_list(
            [
                {"prompt": r["prompt"], "completion": r[c], "label": c == "chosen"}
                for r in rows
                for c in ("chosen", "rejected")
            ]
        )
        cfg = KTOConfig(beta=args.beta, **common)
        return KTOTrainer(args=cfg, train_dataset=unpaired, **kw)
    if args.method == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        cfg = CPOConfig(
            beta=args.beta,
            loss_type="simpo",
            cpo_alpha=0.0,
            simpo_gamma=args.simpo_gamma,
            **common,
        )
        return CPOTrainer(args=cfg, train_dataset=paired, **kw)
    if args.method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        cfg = ORPOConfig(beta=args.beta, **common)
        return ORPOTrainer(args=cfg, train_dataset=paired, **kw)
    raise ValueError(f"unknown method {args.method!r}")


def train(args: TrainArgs) -> list[float]:
    """Train and save the adapter to `args.out`; returns the loss of every step."""
    rows = read_pairs(args.pairs)
    if not rows:
        raise ValueError(f"{args.pairs}: no pairs")
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    common = dict(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_length=args.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = _trainer(args, model, tokenizer, rows, common)
    trainer.train()
    trainer.model.save_pretrained(args.out)
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def read_adapter(path: str | Path) -> tuple[dict, bytes]:
    """(LoRA config dict, safetensors bytes) of an adapter directory: what an engine's
    `load_adapter(version, config, bytes)` takes."""
    path = Path(path)
    config = json.loads((path / "adapter_config.json").read_text())
    return config, (path / "adapter_model.safetensors").read_bytes()
