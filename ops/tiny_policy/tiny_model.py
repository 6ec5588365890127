"""The tiny Llama's shape (`llama_config`, also the tiny policies'), and a tiny *random* Llama
with the character tokenizer saved as a model directory; no downloads.

Engine tests and the engine benchmark load the random one like any Hugging Face model
directory (`config.json`, safetensors weights, `tokenizer.json`), so the transformers engine
and a vLLM engine read the same files. Its tokenizer has no `<bos>`: token ids 0 `<pad>`,
1 `<eos>`, 2 `<unk>`, then one id per character of `ALPHABET` (ops/tiny_policy/tokenizer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from ops.tiny_policy.tokenizer import build_char_tokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 +-=*.,:;?!\n"


@dataclass(frozen=True, slots=True)
class TinyModelConfig:
    """Shape of the tiny random model; the defaults run a decode step in about a millisecond."""

    hidden_size: int = 32
    """Width of the residual stream."""
    num_layers: int = 2
    """Number of transformer blocks."""
    num_heads: int = 4
    """Attention heads per block."""
    num_kv_heads: int = 2
    """Key/value heads per block (grouped-query attention when below `num_heads`)."""
    intermediate_size: int = 64
    """Width of the MLP."""
    max_positions: int = 1024
    """Longest sequence (prompt plus completion), in tokens."""
    tie_embeddings: bool = False
    """Share the input embedding with the output projection."""
    init_std: float = 0.02
    """Standard deviation of the random weights."""
    lm_head_std: float = 0.5
    """Standard deviation of the output projection; large values make sampling peaky."""
    eos_logit_zero: bool = True
    """Zero the EOS row of the output projection so EOS is rare (long completions)."""
    seed: int = 0
    """Seed of the random initialisation."""


def char_tokenizer() -> PreTrainedTokenizerFast:
    """The random model's tokenizer: one id per character of `ALPHABET`, no `<bos>`."""
    return build_char_tokenizer(ALPHABET, bos=False)


def llama_config(tokenizer: PreTrainedTokenizerFast, shape: TinyModelConfig) -> LlamaConfig:
    """A Llama of `shape` over the tokenizer's vocabulary and special tokens."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_positions,
        initializer_range=shape.init_std,
        tie_word_embeddings=shape.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def build_tiny_model_dir(path: str | Path, config: TinyModelConfig | None = None) -> Path:
    """Write a random tiny Llama and its tokenizer to `path`; returns the path."""
    cfg = config or TinyModelConfig()
    path = Path(path)
    tokenizer = char_tokenizer()
    model_config = llama_config(tokenizer, cfg)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, cfg.lm_head_std)
        if cfg.eos_logit_zero:
            model.lm_head.weight[tokenizer.eos_token_id] = 0.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
