"""Held-out pass@1 of the current adapter, measured inside the learner.

Why in the learner (and not `gpo eval` following the weights stream): the learner holds the
exact weights of each version already, so there is no fetch, no second copy of the model
and no race with publishing; on the demo's 2 CPU cores a separate evaluator would compete
for the same cores anyway. The cost is paid every `eval.every` updates: `eval.count`
prompts, one sample each at temperature 1 (pass@1 of the sampling policy the actors use;
no top-k, no top-p), `eval.max_new_tokens` at most. Sampling is seeded by (seed, step), so
two evaluations of the same weights give the same number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from actors.tasks.base import Task, TaskPrompt
from learner.policy import Policy


@torch.no_grad()
def sample_completions(
    policy: Policy,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int,
    temperature: float,
    generator: torch.Generator,
) -> list[list[int]]:
    """One completion per prompt, sampled with a KV cache; left-padded batch."""
    model = policy.model
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        attn[i, width - len(p) :] = 1
    ids, attn = ids.to(policy.device), attn.to(policy.device)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
    done = torch.zeros(len(prompts), dtype=torch.bool)
    tokens: list[list[int]] = [[] for _ in prompts]
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1].float().cpu() / temperature
        nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                tokens[i].append(t)
                done[i] = eos_id is not None and t == eos_id
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        out = model(
            input_ids=nxt.unsqueeze(-1).to(policy.device),
            attention_mask=attn,
            position_ids=pos,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
    return tokens


def heldout_pass_at_1(
    policy: Policy,
    task: Task,
    tokenizer,
    prompts: Sequence[TaskPrompt],
    max_new_tokens: int,
    batch: int,
    temperature: float,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Fraction of `prompts` whose one sampled completion the task scores 1.

    `progress(done, total)` is called after each batch (prompts scored so far, all prompts).
    """
    gen = torch.Generator().manual_seed(seed)
    policy.model.eval()
    correct = 0.0
    try:
        for start in range(0, len(prompts), batch):
            chunk = prompts[start : start + batch]
            encoded = [list(tokenizer(p.text)["input_ids"]) for p in chunk]
            outs = sample_completions(
                policy,
                encoded,
                max_new_tokens,
                tokenizer.eos_token_id,
                tokenizer.pad_token_id or 0,
                temperature,
                gen,
            )
            for p, toks in zip(chunk, outs, strict=True):
                text = tokenizer.decode(toks, skip_special_tokens=True)
                correct += task.score(p, text) >= 1.0
            if progress is not None:
                progress(start + len(chunk), len(prompts))
    finally:
        policy.model.train()
    return correct / max(len(prompts), 1)
