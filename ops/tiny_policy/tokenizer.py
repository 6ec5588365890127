"""The character-level tokenizer of the tiny policies and the tiny random model: one token per
character.

Built from a `tokenizers` WordLevel model (no download) and wrapped as a transformers
`PreTrainedTokenizerFast`, so `save_pretrained` / `AutoTokenizer.from_pretrained` round-trip
it. Ids: the special tokens first (`<pad>`, `<bos>`, `<eos>`, `<unk>`; without `<bos>` when
`bos` is off), then the alphabet in the given order. With `bos`, encoding text prepends
`<bos>` (as Llama tokenizers do); decoding joins characters with nothing between them.
Characters outside the alphabet become `<unk>`.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_char_tokenizer(alphabet: str, bos: bool = True) -> PreTrainedTokenizerFast:
    """A tokenizer with one id per distinct character of `alphabet` plus the special tokens
    (`bos` off: no `<bos>` token, nothing prepended)."""
    chars = list(dict.fromkeys(alphabet))
    specials = SPECIAL_TOKENS if bos else tuple(t for t in SPECIAL_TOKENS if t != BOS)
    vocab = {tok: i for i, tok in enumerate([*specials, *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS if bos else None,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
