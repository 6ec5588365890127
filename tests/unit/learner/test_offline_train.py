"""`gpo offline train` per method on the tiny model: the loss falls, the adapter loads."""

import asyncio
import json

import pytest
import torch

pytest.importorskip("trl", reason="the `offline` extra (TRL) is not installed")

from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from learner.offline.train import TrainArgs, read_adapter, train  # noqa: E402

PAIRS = [
    {"prompt": "Q: 1+2\n", "chosen": "1+2=3\nA: 3", "rejected": "1+2=4\nA: 4"},
    {"prompt": "Q: 5-3\n5-3=2\n", "chosen": "A: 2", "rejected": "A: 7"},
    {"prompt": "Q: 4+4\n", "chosen": "4+4=8\nA: 8", "rejected": "4+4=9\nA: 9"},
    {"prompt": "Q: 9-1\n", "chosen": "9-1=8\nA: 8", "rejected": "9-1=6\nA: 6"},
]


@pytest.mark.parametrize("method", ["dpo", "kto", "simpo", "orpo"])
def test_training_lowers_the_loss_and_saves_a_loadable_adapter(method, tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    out = tmp_path / "adapter"
    # One batch holds every pair (KTO: every row), so each step sees the same data.
    batch = 2 * len(PAIRS) if method == "kto" else len(PAIRS)
    losses = train(
        TrainArgs(
            method,
            str(pairs),
            str(tiny_model_dir),
            str(out),
            steps=4,
            batch=batch,
            lr=2e-2,
            max_length=64,
        )
    )
    assert len(losses) == 4 and losses[-1] < losses[0]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, out)
    assert not torch.allclose(tuned(ids).logits, before)  # the adapter changes the policy
    if method == "dpo":  # the engines take the same directory
        from actors.engines.transformers_engine import TransformersEngine, TransformersEngineConfig

        engine = TransformersEngine(TransformersEngineConfig(model=str(tiny_model_dir)))
        asyncio.run(engine.load_adapter(1, *read_adapter(out)))
        asyncio.run(engine.close())
