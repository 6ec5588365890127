"""Bounded, strict msgpack codec for the wire types of `protocol.messages`.

`decode` is the only door into a process: whatever the bytes, it returns a fully validated
message or raises `ProtocolError` with a short machine-readable `reason` (the dead-letter
reason). The size is checked before unpacking, msgpack runs with explicit length limits,
`strict_map_key`, and an ext hook that refuses; nesting deeper than any message needs, non
string keys, unknown versions, types or fields, mistyped or missing fields, per-token arrays
whose lengths disagree, and token ids outside the vocabulary are all refused. No pickle.
The rules each field and message must meet are `protocol.validation`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import struct
import sys
import typing
from typing import Any

import msgpack

from protocol.messages import (
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    Message,
)
from protocol.validation import (
    DEFAULT_LIMITS,
    FIELD_CHECKS,
    CodecLimits,
    ProtocolError,
    check_invariants,
    check_ranges,
)

MAX_DEPTH = 4  # deepest legal message: map -> lora_config map -> list -> scalar
_HEADER = ("v", "type")
_BYTES = (bytes, bytearray, memoryview)
_CONTAINERS = (dict, list)


# ---------------------------------------------------------------- field schemas


@functools.cache
def _schema(cls: type) -> tuple[tuple[str, str], ...]:
    """(field name, wire kind) for each field of a message class, from its annotations."""
    hints = typing.get_type_hints(
        cls, include_extras=True, globalns=vars(sys.modules[cls.__module__])
    )
    out = []
    for f in dataclasses.fields(cls):
        out.append((f.name, _kind(hints[f.name])))
    return tuple(out)


def _kind(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Annotated:
        return typing.get_args(hint)[1]  # "i32" or "f32"
    if hint in (int, float, str, dict):
        return hint.__name__
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return "str"
    if type(None) in args:  # X | None
        (inner,) = [a for a in args if a is not type(None)]
        return _kind(inner) + "?"
    if hint == list[str]:
        return "strs"
    if hint == list[tuple[int, int]]:
        return "spans"
    raise TypeError(f"no wire kind for {hint!r}")


# ---------------------------------------------------------------- encode


def encode(msg: Message) -> bytes:
    """Message -> msgpack bytes (per-token arrays packed as little-endian binary)."""
    out: dict[str, Any] = {"v": SCHEMA_VERSION, "type": msg.TYPE}
    for name, kind in _schema(type(msg)):
        value = getattr(msg, name)
        if kind in ("i32", "f32"):
            value = value.tobytes()  # __post_init__ made it a little-endian array
        elif kind == "spans":
            value = struct.pack(f"<{2 * len(value)}i", *itertools.chain.from_iterable(value))
        out[name] = value
    return msgpack.packb(out, use_bin_type=True)


# ---------------------------------------------------------------- decode


def decode(raw: bytes, limits: CodecLimits = DEFAULT_LIMITS) -> Message:
    """msgpack bytes -> validated message; raises ProtocolError for anything else."""
    if not isinstance(raw, _BYTES):
        raise ProtocolError("bad_input", f"expected bytes, got {type(raw).__name__}")
    if len(raw) > limits.max_bytes:
        raise ProtocolError("too_large", f"{len(raw)} bytes > cap {limits.max_bytes}")
    obj = _unpack(raw, limits.max_bytes)
    if not isinstance(obj, dict):
        raise ProtocolError("not_a_map", type(obj).__name__)
    typ = obj.get("type")
    cls = MESSAGE_TYPES.get(typ) if type(typ) is str else None
    if cls is None or obj.keys() != _keys(cls):
        # a map with exactly a message's keys needs no depth check: each value then meets
        # its field's strict check, and none admits nesting deeper than MAX_DEPTH
        _check_depth(obj, 1)
    v = obj.get("v")
    if v != SCHEMA_VERSION or type(v) is not int:
        raise ProtocolError("unknown_version", repr(v)[:40])
    if cls is None:
        raise ProtocolError("unknown_type", repr(obj.get("type"))[:40])
    fields = _decoder(cls)
    if len(obj) != len(fields) + len(_HEADER):
        extra = set(obj) - {name for name, _, _ in fields} - set(_HEADER)
        if extra:
            raise ProtocolError("unexpected_field", ",".join(sorted(map(str, extra)))[:80])
    values = {}
    for name, check, optional in fields:
        if name not in obj:
            raise ProtocolError("missing_field", name)
        value = obj[name]
        if value is None and optional:
            values[name] = None
            continue
        try:
            values[name] = check(value, limits)
        except ProtocolError as e:
            raise ProtocolError(e.reason, f"{name}: {e.detail}") from None
    msg = _build(cls, values)
    check_invariants(msg)
    check_ranges(msg, limits)
    return msg


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    """The message of `values`, every field checked and each array already a 1-D view of
    its dtype: set directly, skipping the constructor's conversions, which would only check
    the arrays again."""
    msg = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(msg, name, value)
    return msg


def _unpack(raw: bytes, cap: int) -> Any:
    def refuse_ext(code: int, data: bytes) -> Any:
        raise ProtocolError("ext_type", f"ext code {code}")

    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=refuse_ext,
            max_bin_len=cap,
            max_str_len=cap,
            max_array_len=cap,
            max_map_len=cap,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except UnicodeDecodeError as e:
        raise ProtocolError("bad_utf8", str(e)[:80]) from None
    except msgpack.ExtraData:
        raise ProtocolError("trailing_data") from None
    except msgpack.exceptions.StackError:
        raise ProtocolError("too_deep", "msgpack nesting limit") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
        # msgpack reports truncation, bad headers, over-limit lengths, non-str keys and its
        # own stack limit all as ValueError subclasses; the message says which.
        text = str(e)
        if "Unpack failed: incomplete input" in text or "insufficient" in text.lower():
            raise ProtocolError("truncated", text[:80]) from None
        if "map key" in text:
            raise ProtocolError("bad_key", text[:80]) from None
        if "max_ext_len" in text:
            raise ProtocolError("ext_type", text[:80]) from None
        if "exceeds max_" in text:
            raise ProtocolError("too_large", text[:80]) from None
        raise ProtocolError("bad_msgpack", text[:80]) from None


def _check_depth(obj: Any, depth: int) -> None:
    # msgpack builds exact dicts and lists, so `type() in` stands for isinstance (it runs on
    # every key of every message)
    if depth > MAX_DEPTH:
        raise ProtocolError("too_deep", f"nesting deeper than {MAX_DEPTH}")
    if type(obj) is dict:
        for k, v in obj.items():
            if type(k) is not str:
                raise ProtocolError("bad_key", f"non-string key {type(k).__name__}")
            if type(v) in _CONTAINERS:
                _check_depth(v, depth + 1)
    elif type(obj) is list:
        for v in obj:
            if type(v) in _CONTAINERS:
                _check_depth(v, depth + 1)


@functools.cache
def _keys(cls: type) -> frozenset[str]:
    """The keys of a message map of this class: the header and every field."""
    return frozenset(_HEADER) | {name for name, _ in _schema(cls)}


@functools.cache
def _decoder(cls: type) -> tuple[tuple[str, Any, bool], ...]:
    """(field name, check function, may be None) per field, resolved once per class."""
    return tuple(
        (name, FIELD_CHECKS[kind.rstrip("?")], kind.endswith("?")) for name, kind in _schema(cls)
    )
