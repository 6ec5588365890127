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
logprob = st.floats(-1e6, 0, allow_nan=False, width=32)
signed_unit = st.floats(-1, 1, allow_nan=False, width=32)
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
        logprobs=draw(st.lists(logprob, min_size=n, max_size=n)),
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
        advantages=draw(st.lists(signed_unit, min_size=t, max_size=t)),
        value=draw(unit),
        n=draw(st.integers(1, 64)),
        policy_version=draw(st.integers(0, 100)),
        selection=draw(st.sampled_from(["advantage", "random"])),
    )


@st.composite
def samples(draw):
    n = draw(st.integers(1, 60))
    return Sample(
        id=draw(ids),
        run=draw(ids),
        ts=draw(ts),
        prompt_id=draw(ids),
        kind=draw(st.sampled_from(["fresh", "reset"])),
        token_ids=draw(st.lists(tok, min_size=n, max_size=n)),
        loss_mask=draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)),
        logprobs=draw(st.lists(logprob, min_size=n, max_size=n)),
        advantages=draw(st.lists(signed_unit, min_size=n, max_size=n)),
        returns=draw(st.one_of(st.just([]), st.lists(unit, min_size=n, max_size=n))),
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
    lora_config=st.fixed_dictionaries(
        {"r": st.integers(1, 1024), "lora_alpha": st.floats(0.5, 1e4)},
        optional={
            "lora_dropout": unit,
            "target_modules": st.lists(st.text(max_size=10), max_size=4),
            "bias": st.text(max_size=10),
            "task_type": st.text(max_size=10),
        },
    ),
    sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    size=st.integers(5, 10**9),
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


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=30),
    st.data(),
    st.one_of(st.none(), st.integers(1, 2**32)),
)
def test_array_checks_agree_with_an_elementwise_reference(token_ids, data, vocab):
    """The decoder checks token ids and logprobs in one numpy pass each (an unsigned max, a
    float64 sum that only NaN and infinities make non-finite); it accepts exactly what the
    element-wise rule accepts, float32 extremes included."""
    n = len(token_ids)
    extremes = st.sampled_from([-3.4e38, -1e-45, 0.0, 1e-4, 2e-4, -np.inf, np.inf, np.nan])
    logprobs = data.draw(st.lists(st.one_of(st.floats(width=32), extremes), min_size=n, max_size=n))
    raw = raw_map(
        completion_token_ids=np.array(token_ids, dtype="<i4").tobytes(),
        logprobs=np.array(logprobs, dtype="<f4").tobytes(),
        step_spans=np.array([0, n], dtype="<i4").tobytes(),
    )
    lp32 = np.array(logprobs, dtype="<f4").tolist()
    prefix = good_trajectory().prefix_token_ids.tolist()  # raw_map keeps it
    ids_ok = all(t >= 0 and (vocab is None or t < vocab) for t in [*prefix, *token_ids])
    finite = all(np.isfinite(x) for x in lp32)
    at_most = all(x <= 1e-4 for x in lp32)
    expected = (
        "token_out_of_range" if not ids_ok else "bad_value" if not (finite and at_most) else None
    )
    try:
        msg = decode(raw, CodecLimits(vocab_size=vocab))
        got = None
    except ProtocolError as e:
        got = e.reason
        assert got != "bad_value" or ("not finite" in e.detail) == (not finite), e
    assert got == expected
    if got is None:
        assert msg.completion_token_ids.tolist() == token_ids


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


# --- values that decode but are absurd (RELIABILITY: refused at the protocol boundary) -----


def good_reset(**kw) -> ResetRequest:
    base = dict(
        id="reset:p/0",
        run="r",
        ts=1.0,
        trajectory_id="p/0",
        prompt_id="p",
        task="t",
        answer="4",
        critical_step=0,
        prompt_len=2,
        prefix_token_ids=[1, 2],
        step_values=[0.5, 1.0],
        advantages=[0.5],
        value=0.5,
        n=4,
        policy_version=0,
        selection="advantage",
    )
    return ResetRequest(**{**base, **kw})


def good_sample(**kw) -> Sample:
    base = dict(
        id="p/0",
        run="r",
        ts=1.0,
        prompt_id="p",
        kind="fresh",
        token_ids=[1, 2, 3],
        loss_mask=[0, 1, 1],
        logprobs=[0.0, -0.5, -1.0],
        advantages=[0.0, 0.5, -0.5],
        returns=[],
        step_values=[0.5, 1.0],
        reward=1.0,
        policy_version=0,
    )
    return Sample(**{**base, **kw})


def good_pointer(**kw) -> AdapterPointer:
    lora = {"r": 8, "lora_alpha": 16.0, "lora_dropout": 0.0, "target_modules": ["q_proj"]}
    base = dict(
        id="adapter:1",
        run="r",
        ts=1.0,
        version=1,
        base_model="m",
        lora_config={**lora, "bias": "none", "task_type": "CAUSAL_LM"},
        sha256="0" * 64,
        size=100,
        chunk_keys=["k0", "k1"],
    )
    return AdapterPointer(**{**base, **kw})


@pytest.mark.parametrize(
    "msg, why",
    [
        (good_trajectory(logprobs=[-0.5, 0.3, -0.25]), "logprob > 0"),
        (
            good_trajectory(
                kind="reset", parent_id="x", reset_step=0, reset_value=1.5, reset_value_count=4
            ),
            "reset_value outside",
        ),
        (good_reset(step_values=[1.5, 1.0]), "step_values outside"),
        (good_reset(value=-0.1), "value outside"),
        (good_reset(advantages=[2.0]), "advantages outside"),
        (good_reset(n=10_000), "n > 64"),
        (good_sample(advantages=[0.0, 3.0, 0.0]), "advantages outside"),
        (good_sample(logprobs=[0.0, 0.5, -1.0]), "logprob > 0"),
        (good_sample(returns=[0.0, 1.0, 7.0]), "returns outside"),
        (good_sample(step_values=[2.0]), "step_values outside"),
        (good_sample(kind="reset", baseline_value=1.5, baseline_count=4), "baseline_value"),
        (
            good_pointer(lora_config={"r": 8, "lora_alpha": 16, "modules_to_save": ["lm_head"]}),
            "beyond LoRA",
        ),
        # 0 equals False but is a setting: layer 0 only
        (good_pointer(lora_config={"r": 8, "layers_to_transform": 0}), "['layers_to_transform']"),
        (good_pointer(lora_config={"r": 8, "use_dora": True}), "['use_dora']"),
        (good_pointer(lora_config={"r": 8, "peft_type": "IA3"}), "peft_type"),
        (good_pointer(lora_config={"r": 100_000, "lora_alpha": 16}), "lora_config.r"),
        (good_pointer(lora_config={"r": 8, "lora_alpha": -1.0}), "lora_alpha"),
        (good_pointer(size=1, chunk_keys=["a", "b"]), "more chunks than bytes"),
        (good_pointer(size=2**40), "adapter size"),
    ],
)
def test_absurd_values_are_refused_at_decode(msg, why):
    with pytest.raises(ProtocolError) as e:
        decode(encode(msg))
    assert e.value.reason == "bad_value" and why in str(e.value)


def test_pointer_with_peft_to_dict_form_decodes():
    """peft's `LoraConfig.to_dict()` lists every field, most unset and a few inert ones set by
    default (the form `lora_config_from_dict` documents and adapter_config.json holds)."""
    lora = {
        **good_pointer().lora_config,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "base_model_name_or_path": "/models/base",
        "inference_mode": False,
        "init_lora_weights": True,
        "megatron_core": "megatron.core",
        "qalora_group_size": 16,
        "modules_to_save": None,
        "layers_to_transform": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_dora": False,
        "exclude_modules": None,
    }
    assert decode(encode(good_pointer(lora_config=lora))).lora_config == lora


def test_the_good_versions_of_those_messages_decode():
    for msg in (good_trajectory(), good_reset(), good_sample(), good_pointer()):
        assert decode(encode(msg)) == msg
    # caps are limits of the decoder: a larger reset passes where the limit allows it
    big = good_reset(n=100)
    assert decode(encode(big), CodecLimits(max_reset_n=128)) == big
