"""Rebuild tests/data/smollm2_word_problems.json: SmolLM2-135M-Instruct's own completions
of `word_problems` training prompts (through its chat template), sampled at temperature 1,
kept as the token ids it generated. The step-span property test runs on them.

    python -m tests.support.smollm2_generations [--count 24] [--max-new-tokens 160] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "data" / "smollm2_word_problems.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.tasks.base import load_task, with_tokenizer
    from ops.models import resolve_model

    model_dir = resolve_model("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    task = with_tokenizer(load_task("word_problems"), tokenizer)
    torch.manual_seed(args.seed)
    generations = []
    for prompt in task.train_prompts()[: args.count]:
        ids = tokenizer(prompt.text, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(
                ids,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                pad_token_id=tokenizer.eos_token_id,
            )
        completion = out[0, ids.shape[1] :].tolist()
        generations.append({"prompt_id": prompt.id, "completion_token_ids": completion})
        print(f"{prompt.id}: {len(completion)} tokens", flush=True)
    record = {
        "model": "SmolLM2-135M-Instruct (gpo model smollm2)",
        "tokenizer_vocab_size": len(tokenizer),
        "sampling": {"temperature": 1.0, "max_new_tokens": args.max_new_tokens, "seed": args.seed},
        "generations": generations,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, separators=(",", ":")) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
