"""Codec: round trips (hypothesis), every refusal reason, and a fuzz test that nothing but
ProtocolError ever leaves `decode`."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import CodecLimits, ProtocolError, decode, encode
from protocol.messages import AdapterPointer, Prompt, ResetRequest, Sample, Trajectory

ids = st.text(min_size=1, max_size=40)
text = st.text(max_size=200)
tok = st.integers(0, 50_000)
f32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)
unit = st.floats(0, 1, allow_nan=False, width=32)
ts = st.floats(0, 2e9, allow_nan=False)


@st.composite
def spans_for(draw, n: int):
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=min(n - 1, 10)))) if n > 1 else []
    bounds = [0, *cuts, n]
    return [(a, b) for a, b in zip(bounds, bounds[1:])]


prompts = st.builds(
    Prompt,
    id=ids,
    run=ids,
    ts=ts,
    task=text,
    text=text,
    token_ids=st.lists(tok, min_size=1, max_size=50),
    answer=text,
    epoch=st.integers(0, 1000),
)


@st.composite
def trajectories(draw):
    n = draw(st.integers(1, 60))
    prefix = draw(st.lists(tok, min_size=1, max_size=40))
    reset = draw(st.booleans())
    return Trajectory(
        id=draw(ids),
        run=draw(ids),
        ts=draw(ts),
        prompt_id=draw(ids),
        task=draw(text),
        answer=draw(text),
        kind="reset" if reset else "fresh",
        parent_id=draw(ids) if reset else None,
        reset_step=draw(st.integers(0, 20)) if reset else None,
        reset_value=draw(unit) if reset else None,
        prompt_len=draw(st.integers(1, len(prefix))),
        prefix_token_ids=prefix,
        completion_token_ids=draw(st.lists(tok, min_size=n, max_size=n)),
        logprobs=draw(st.lists(f32, min_size=n, max_size=n)),
        step_spans=draw(spans_for(n)),
        reward=draw(unit),
        policy_version=draw(st.integers(0, 10**6)),
        actor=draw(text),
        gen_seconds=draw(unit),
    )


@st.composite
def resets(draw):
    t = draw(st.integers(1, 10))
    prefix = draw(st.lists(tok, min_size=1, max_size=40))
    return ResetRequest(
        id=draw(ids),
        run=draw(ids),
        ts=draw(ts),
        trajectory_id=draw(ids),
        prompt_id=draw(ids),
        task=draw(text),
        answer=draw(text),
        critical_step=draw(st.integers(0, t - 1)),
        prompt_len=draw(st.integers(1, len(prefix))),
        prefix_token_ids=prefix,
        step_values=draw(st.lists(unit, min_size=t + 1, max_size=t + 1)),
        advantages=draw(st.lists(f32, min_size=t, max_size=t)),
        value=draw(unit),
        n=draw(st.integers(1, 64)),
        policy_version=draw(st.integers(0, 100)),
        selection=draw(st.sampled_from(["advantage", "random"])),
    )


@st.composite
def samples(draw):
    n = draw(st.integers(1, 60))
    arr = st.lists(f32, min_size=n, max_size=n)
    return Sample(
        id=draw(ids),
        run=draw(ids),
        ts=draw(ts),
        prompt_id=draw(ids),
        kind=draw(st.sampled_from(["fresh", "reset"])),
        token_ids=draw(st.lists(tok, min_size=n, max_size=n)),
        loss_mask=draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)),
        logprobs=draw(arr),
        advantages=draw(arr),
        returns=draw(st.one_of(st.just([]), arr)),
        step_values=draw(st.lists(unit, max_size=8)),
        reward=draw(unit),
        policy_version=draw(st.integers(0, 100)),
    )


pointers = st.builds(
    AdapterPointer,
    id=ids,
    run=ids,
    ts=ts,
    version=st.integers(1, 10**6),
    base_model=text,
    lora_config=st.dictionaries(
        st.text(max_size=10),
        st.one_of(
            st.integers(-(2**63), 2**63 - 1),
            st.text(max_size=10),
            st.lists(st.text(max_size=10), max_size=4),
        ),
        max_size=5,
    ),
    sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    size=st.integers(1, 10**9),
    chunk_keys=st.lists(ids, min_size=1, max_size=5),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(prompts, trajectories(), resets(), samples(), pointers))
def test_round_trip(msg):
    assert decode(encode(msg)) == msg


def good_trajectory(**kw) -> Trajectory:
    base = dict(
        id="p/0",
        run="r",
        ts=1.0,
        prompt_id="p",
        task="t",
        answer="4",
        kind="fresh",
        parent_id=None,
        reset_step=None,
        reset_value=None,
        prompt_len=2,
        prefix_token_ids=[1, 2],
        completion_token_ids=[3, 4, 5],
        logprobs=[-0.5, -1.0, -0.25],
        step_spans=[(0, 2), (2, 3)],
        reward=1.0,
        policy_version=0,
        actor="a",
        gen_seconds=0.1,
    )
    return Trajectory(**{**base, **kw})


def raw_map(**fields) -> bytes:
    m = msgpack.unpackb(encode(good_trajectory()), raw=False)
    m.update(fields)
    return msgpack.packb({k: v for k, v in m.items() if v is not ...}, use_bin_type=True)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (encode(good_trajectory())[:-3], "truncated"),
        (b"", "truncated"),
        (b"\x91" * 3000, "too_deep"),
        (msgpack.packb({"v": 1, "a": [[[[[1]]]]]}), "too_deep"),
        (msgpack.packb(msgpack.ExtType(3, b"x")), "ext_type"),
        (msgpack.packb({1: 2}), "bad_key"),
        (msgpack.packb({b"v": 1}, use_bin_type=True), "bad_key"),
        (b"\x81\xa1v\xa2\xff\xfe", "bad_utf8"),
        (b"\xdd\xff\xff\xff\xff", "too_large"),
        (pickle.dumps({"a": 1}), "trailing_data"),
        (msgpack.packb([1, 2]), "not_a_map"),
        (raw_map(v=1), "unknown_version"),  # the schema before the baseline fields
        (raw_map(v="1"), "unknown_version"),
        (raw_map(type="bogus"), "unknown_type"),
        (raw_map(reward=...), "missing_field"),
        (raw_map(reward="1"), "bad_field_type"),
        (raw_map(policy_version=True), "bad_field_type"),
        (raw_map(extra=1), "unexpected_field"),
        (raw_map(logprobs=b"\x00" * 8), "length_mismatch"),
        (raw_map(logprobs=b"\x00" * 7), "bad_length"),
        (raw_map(completion_token_ids=[3, 4, 5]), "bad_field_type"),
        (
            raw_map(completion_token_ids=(-1).to_bytes(4, "little", signed=True) * 3),
            "token_out_of_range",
        ),
        (raw_map(step_spans=bytes(np.array([0, 1, 2, 3], dtype="<i4"))), "bad_spans"),
        (raw_map(step_spans=[[0, 2], [2, 3]]), "bad_field_type"),
        (raw_map(reward=1.5), "bad_value"),
        (raw_map(reward=float("nan")), "bad_value"),
        (raw_map(kind="reset"), "bad_value"),
    ],
)
def test_refusals(raw, reason):
    with pytest.raises(ProtocolError) as e:
        decode(raw)
    assert e.value.reason == reason, str(e.value)


def test_size_checked_before_unpacking():
    raw = encode(good_trajectory())
    with pytest.raises(ProtocolError) as e:
        decode(raw, CodecLimits(max_bytes=len(raw) - 1))
    assert e.value.reason == "too_large"
    assert decode(raw, CodecLimits(max_bytes=len(raw))) == good_trajectory()


def test_vocab_bound_when_known():
    raw = encode(good_trajectory(completion_token_ids=[3, 4, 99]))
    assert decode(raw).completion_token_ids[-1] == 99
    with pytest.raises(ProtocolError) as e:
        decode(raw, CodecLimits(vocab_size=99))
    assert e.value.reason == "token_out_of_range"


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_only_protocol_error(raw):
    try:
        decode(raw)
    except ProtocolError:
        pass


@settings(max_examples=2000, deadline=None)
@given(st.data())
def test_fuzz_mutated_messages_only_protocol_error(data):
    raw = bytearray(encode(good_trajectory()))
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[i : i + data.draw(st.integers(1, 8))]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        if not raw:
            break
    try:
        msg = decode(bytes(raw))
    except ProtocolError:
        return
    assert isinstance(msg, Trajectory)  # a mutation may still be a valid message: then it is typed
