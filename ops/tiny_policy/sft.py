"""The training of a tiny base policy (ops/tiny_policy/bootstrap.py builds and caches it):
SFT on the task's worked solutions until its held-out accuracy enters the config's band,
with snapshots to rewind to when an evaluation overshoots it."""

from __future__ import annotations

import copy
import logging
import random
import time
from collections import Counter
from typing import TYPE_CHECKING

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from actors.tasks import arithmetic, pivot
from actors.tasks.base import TaskPrompt
from ops.tiny_policy.tiny_model import TinyModelConfig, llama_config

if TYPE_CHECKING:  # it imports this module
    from ops.tiny_policy.bootstrap import BootstrapConfig

log = logging.getLogger(__name__)

TASK_MODULES = {"arithmetic": arithmetic, "pivot": pivot}
"""The built-in tasks a tiny policy is trained on, by name."""


def model_config(config: BootstrapConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """A small Llama over the character vocabulary, embeddings tied (`llama_config`)."""
    shape = TinyModelConfig(
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_kv_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_positions=256 if config.task == "arithmetic" else 512,
        tie_embeddings=True,
    )
    return llama_config(tokenizer, shape)


def train(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    task: arithmetic.Arithmetic | pivot.Pivot,
    config: BootstrapConfig,
) -> dict:
    """SFT until the held-out measure enters its band (or a limit is hit); returns the
    record."""
    rng = random.Random(config.seed)
    prompts = task.train_prompts()
    heldout = task.heldout_prompts()[: config.eval_prompts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps))
    )
    snapshot = _snapshot(model, optimizer, warmup, 0)
    eval_every, step, evals, smooth = config.eval_every, 0, [], float("inf")
    start = time.monotonic()
    while True:
        # 1. one SFT step on a batch of canonical solutions
        batch = [prompts[rng.randrange(len(prompts))] for _ in range(config.batch_size)]
        loss = sft_step(model, tokenizer, optimizer, batch, TASK_MODULES[config.task].solution)
        smooth = loss if smooth == float("inf") else 0.9 * smooth + 0.1 * loss
        warmup.step()
        step += 1
        out_of_budget = (
            time.monotonic() - start > config.max_train_seconds or step >= config.max_train_steps
        )
        if not out_of_budget and (step % eval_every or smooth > config.eval_below_loss):
            continue
        # 2. evaluate; stop in the band, rewind after an overshoot
        accuracy, histogram, steps = evaluate(
            model, tokenizer, task, heldout, config.seed + step, config.max_new_tokens
        )
        evals.append(
            {"step": step, "loss": round(smooth, 4), "pass_at_1": accuracy}
            | ({"step_accuracy": steps} if steps else {})
        )
        log.info(
            "bootstrap step %d loss %.3f pass@1 %.3f%s",
            step,
            smooth,
            accuracy,
            f" easy {steps['easy_rate']:.3f} pivot {steps['pivot_rate']:.3f}" if steps else "",
        )
        if config.in_band(accuracy, steps) or out_of_budget:
            break
        if config.overshoot(accuracy, steps):
            if eval_every <= 10:
                break  # overshoots even at the finest interval: keep it, recorded as such
            step = _restore(model, optimizer, warmup, snapshot)
            eval_every = max(10, eval_every // 2)
            continue
        snapshot = _snapshot(model, optimizer, warmup, step)
    in_band = config.in_band(accuracy, steps)
    if not in_band:
        log.warning("bootstrap stopped outside its band: pass@1 %.3f, steps %s", accuracy, steps)
    return {
        "pass_at_1": accuracy,
        "in_band": in_band,
        **({"step_accuracy": steps} if steps else {}),
        "train_steps": step,
        "train_seconds": round(time.monotonic() - start, 1),
        "first_wrong_step_histogram": histogram,
        "evaluations": evals,
    }


def sft_step(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    optimizer: torch.optim.Optimizer,
    batch: list[TaskPrompt],
    solution=arithmetic.solution,
) -> float:
    """One optimizer step of next-token loss on the completion tokens (and EOS) only;
    `solution(prompt_text)` is the task's canonical completion."""
    ids, labels = [], []
    for p in batch:
        prompt = tokenizer(p.text)["input_ids"]  # <bos> + prompt
        completion = tokenizer(solution(p.text), add_special_tokens=False)["input_ids"]
        completion = [*completion, tokenizer.eos_token_id]
        ids.append(prompt + completion)
        labels.append([-100] * len(prompt) + completion)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    label_ids = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
    mask = torch.arange(width) < torch.tensor([[len(x)] for x in ids])  # right padding
    loss = model(input_ids=input_ids, attention_mask=mask.long(), labels=label_ids).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss.item()


@torch.no_grad()
def evaluate(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    task: arithmetic.Arithmetic | pivot.Pivot,
    prompts: list[TaskPrompt],
    seed: int,
    max_new_tokens: int = 48,
) -> tuple[float, dict[str, int], dict | None]:
    """Pass@1 with one plain sample (temperature 1) per prompt, where failures start, and
    for the pivot task the per-step accuracy (`pivot.step_accuracy`; else None).

    The histogram maps the first wrong step index (as text, for JSON) to its count.
    """
    model.eval()
    torch.manual_seed(seed)
    enc = tokenizer([p.text for p in prompts], return_tensors="pt", padding=True)
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.train()
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    scores = [task.score(p, t) for p, t in zip(prompts, texts, strict=True)]
    wrong = Counter(task.first_wrong_step(p, t) for p, t in zip(prompts, texts, strict=True))
    histogram = {
        str(k): v for k, v in sorted(wrong.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    }
    steps = pivot.step_accuracy(task, prompts, texts) if isinstance(task, pivot.Pivot) else None
    return sum(scores) / len(scores), histogram, steps


def _snapshot(model, optimizer, scheduler, step: int) -> dict:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "step": step,
    }


def _restore(model, optimizer, scheduler, snapshot: dict) -> int:
    model.load_state_dict(snapshot["model"])
    optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
    scheduler.load_state_dict(snapshot["scheduler"])
    return snapshot["step"]
