"""A tiny random Llama and a character tokenizer, saved as a model directory; no downloads.

Engine tests and the engine benchmark load it like any Hugging Face model directory
(`config.json`, safetensors weights, `tokenizer.json`), so the transformers engine and a vLLM
engine read the same files. Token ids: 0 `<pad>`, 1 `<eos>`, 2 `<unk>`, then one id per
character of `ALPHABET`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 +-=*.,:;?!\n"
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")


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
    init_std: float = 0.02
    """Standard deviation of the random weights."""
    lm_head_std: float = 0.5
    """Standard deviation of the output projection; large values make sampling peaky."""
    eos_logit_zero: bool = True
    """Zero the EOS row of the output projection so EOS is rare (long completions)."""
    seed: int = 0
    """Seed of the random initialisation."""


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer over `ALPHABET` with pad, eos and unk tokens."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(ALPHABET)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def build_tiny_model_dir(path: str | Path, config: TinyModelConfig | None = None) -> Path:
    """Write a random tiny Llama and its tokenizer to `path`; returns the path."""
    cfg = config or TinyModelConfig()
    path = Path(path)
    tokenizer = char_tokenizer()
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions,
        initializer_range=cfg.init_std,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, cfg.lm_head_std)
        if cfg.eos_logit_zero:
            model.lm_head.weight[tokenizer.eos_token_id] = 0.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
