"""The layout of a safetensors file, read and checked from its header alone (no tensor copied).

A safetensors file is an 8-byte little-endian header length n, n bytes of JSON, then the
tensors' bytes. The header maps each tensor name to its dtype, shape and `data_offsets`
(begin, end) within the byte buffer that follows; an optional `__metadata__` maps strings
to strings. `layout` accepts a file only when, as the format requires, every tensor's byte
count is its element count times its dtype's size, and the tensors tile the byte buffer
exactly: in offset order, no gap, no overlap, nothing left over.

It reads any buffer (bytes, bytearray, memoryview) in place, so the adapter fetch path can
check a blob it assembled in a preallocated buffer without copying it, and the engines can
view each tensor in that buffer (`actors.engines.lora_versions.parse_adapter_weights`):
one parse per adapter version, no pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
"""The dtypes accepted, with their sizes: the ones torch can view in place."""

MAX_HEADER_BYTES = 100_000_000
"""The safetensors library's own bound on the JSON header."""


@dataclass(frozen=True, slots=True)
class TensorSpan:
    """Where one tensor lies in the file."""

    dtype: str
    shape: tuple[int, ...]
    offset: int
    """Byte offset of its first element from the start of the file."""
    nbytes: int


def layout(buf: bytes | bytearray | memoryview) -> dict[str, TensorSpan]:
    """Each tensor's span in the safetensors file `buf`; ValueError naming the first fault."""
    view = memoryview(buf).cast("B")
    if len(view) < 8:
        raise ValueError(f"{len(view)} bytes: shorter than the 8-byte header length")
    n = int.from_bytes(view[:8], "little")
    if n > MAX_HEADER_BYTES or 8 + n > len(view):
        raise ValueError(f"header length {n} does not fit a file of {len(view)} bytes")
    try:
        header = json.loads(bytes(view[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError("__metadata__ must map strings to strings")
    start, spans, ranges = 8 + n, {}, []
    for name, entry in header.items():
        dtype, shape, begin, end = _entry(name, entry)
        expected = math.prod(shape) * DTYPE_BYTES[dtype]
        if end - begin != expected:
            raise ValueError(
                f"tensor {name!r}: {end - begin} bytes for shape {list(shape)} of {dtype} "
                f"({expected} expected)"
            )
        spans[name] = TensorSpan(dtype, shape, start + begin, end - begin)
        ranges.append((begin, end, name))
    covered = 0
    for begin, end, name in sorted(ranges):
        if begin != covered:
            raise ValueError(f"tensor {name!r} starts at {begin}, not at {covered}")
        covered = end
    if start + covered != len(view):
        raise ValueError(
            f"tensors cover {covered} bytes of the {len(view) - start} after the header"
        )
    return spans


def _entry(name: str, entry: object) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"tensor {name!r}: an entry needs exactly dtype, shape, data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"tensor {name!r}: dtype {dtype!r} not among {sorted(DTYPE_BYTES)}")
    if not isinstance(shape, list) or not all(_count(d) for d in shape):
        raise ValueError(f"tensor {name!r}: shape {shape!r} is not a list of counts")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_count, offsets))):
        raise ValueError(f"tensor {name!r}: data_offsets {offsets!r} are not two offsets")
    begin, end = offsets
    if end < begin:
        raise ValueError(f"tensor {name!r}: data_offsets end before they begin")
    return dtype, tuple(shape), begin, end


def _count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
