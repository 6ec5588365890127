"""protocol.safetensors_layout against files the safetensors library writes, and against the
ways a header can lie; the engines' in-place parse against the library's own load."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load, save

from actors.engines.lora_versions import parse_adapter_weights
from protocol.safetensors_layout import layout


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "b.lora_B.weight": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "a.lora_A.weight": torch.randn(3, 7, generator=g),
        "c.half": torch.randn(2, generator=g).to(torch.float16),
        "d.steps": torch.arange(4, dtype=torch.int64),
        "e.empty": torch.zeros(0, 4),
    }


def file_of(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_layout_of_a_library_file():
    data = save(tensors())
    spans = layout(data)
    n = struct.unpack("<Q", data[:8])[0]
    assert set(spans) == set(tensors())
    a = spans["a.lora_A.weight"]
    assert (a.dtype, a.shape, a.nbytes) == ("F32", (3, 7), 84)
    assert spans["b.lora_B.weight"].nbytes == 30 and spans["e.empty"].nbytes == 0
    # the spans tile everything after the header
    assert sum(s.nbytes for s in spans.values()) == len(data) - 8 - n
    assert min(s.offset for s in spans.values()) == 8 + n
    assert layout(memoryview(bytearray(data))) == spans


def test_parse_views_the_buffer_and_equals_the_library_load():
    data = bytearray(save(tensors()))
    mine, theirs = parse_adapter_weights(data), load(bytes(data))
    assert set(mine) == set(theirs)
    for name, t in theirs.items():
        assert mine[name].dtype == t.dtype and mine[name].shape == t.shape
        assert torch.equal(mine[name], t)
    # in place: a change to the buffer shows in the tensor (no copy was made)
    a = mine["a.lora_A.weight"]
    offset = layout(data)["a.lora_A.weight"].offset
    data[offset : offset + 4] = struct.pack("<f", 1234.5)
    assert a.flatten()[0].item() == 1234.5
    # read-only bytes are copied once, and parse the same
    assert torch.equal(parse_adapter_weights(bytes(data))["a.lora_A.weight"], a)


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("buf", "fault"),
    [
        (b"\x01\x00", "shorter than the 8-byte"),
        (struct.pack("<Q", 1000) + b"{}", "does not fit"),
        (struct.pack("<Q", 3) + b"{x}", "not JSON"),
        (file_of([1], b""), "not a JSON object"),  # type: ignore[arg-type]
        (file_of({"t": F32x2}, b"\0" * 7), "cover 8 bytes of the 7"),
        (file_of({"t": F32x2}, b"\0" * 9), "cover 8 bytes of the 9"),
        (file_of({"t": {**F32x2, "dtype": "F128"}}, b"\0" * 8), "dtype 'F128'"),
        (file_of({"t": {**F32x2, "shape": [3]}}, b"\0" * 8), "8 bytes for shape [3]"),
        (file_of({"t": {**F32x2, "shape": [-2]}}, b"\0" * 8), "not a list of counts"),
        (file_of({"t": {**F32x2, "data_offsets": [8, 0]}}, b"\0" * 8), "end before"),
        (file_of({"t": {**F32x2, "extra": 1}}, b"\0" * 8), "exactly dtype, shape"),
        (
            file_of({"t": F32x2, "u": {**F32x2, "data_offsets": [4, 12]}}, b"\0" * 12),
            "starts at 4, not at 8",
        ),  # overlap
        (
            file_of({"t": F32x2, "u": {**F32x2, "data_offsets": [12, 20]}}, b"\0" * 20),
            "starts at 12, not at 8",
        ),  # gap
        (file_of({"__metadata__": {"a": 1}}, b""), "__metadata__"),
    ],
)
def test_a_header_that_lies_is_refused_with_its_fault(buf, fault):
    with pytest.raises(ValueError, match=fault.replace("[", r"\[").replace("]", r"\]")):
        layout(buf)
    with pytest.raises(ValueError, match="not valid safetensors"):
        parse_adapter_weights(buf)


def test_metadata_and_no_tensors_is_a_valid_file():
    assert layout(file_of({"__metadata__": {"format": "pt"}}, b"")) == {}
