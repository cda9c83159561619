"""node_agent.wire against the generated protobuf classes: same messages both ways, no copies of tensor bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent import serde, wire
from node_agent.agent import InferOutcome
from node_agent.runtime import WIRE_DTYPES
from skyinfer.v1 import node_agent_pb2, tensor_pb2

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=12)
TENSORS = st.builds(
    tensor_pb2.Tensor, name=TEXT, dtype=st.sampled_from(["", *sorted(WIRE_DTYPES)]),
    shape=st.lists(INT64, max_size=5), data=st.binary(max_size=300),
)
REQUESTS = st.builds(
    node_agent_pb2.InferRequest, model_id=TEXT, inputs=st.lists(TENSORS, max_size=3), request_id=TEXT,
    simulated_clock=st.booleans(),
)
FLOATS = st.floats(allow_nan=False)
RESPONSES = st.builds(
    node_agent_pb2.InferResponse, model_id=TEXT, outputs=st.lists(TENSORS, max_size=3), request_id=TEXT,
    real_ms=FLOATS, emulated_ms=FLOATS, queue_ms=FLOATS, energy_wh=FLOATS,
)


def _same_tensors(got: tuple[wire.WireTensor, ...], want: list[tensor_pb2.Tensor]) -> None:
    assert [(t.name, t.dtype, t.shape, bytes(t.data)) for t in got] == [
        (t.name, t.dtype, tuple(t.shape), t.data) for t in want
    ]


def _same_request(got: wire.WireInferRequest, want: node_agent_pb2.InferRequest) -> None:
    assert (got.model_id, got.request_id, got.simulated_clock) == (want.model_id, want.request_id,
                                                                   want.simulated_clock)
    _same_tensors(got.inputs, list(want.inputs))


@settings(max_examples=150, deadline=None)
@given(REQUESTS, REQUESTS)
def test_requests_decode_as_protobuf_parses_them_including_merged_messages(
    a: node_agent_pb2.InferRequest, b: node_agent_pb2.InferRequest
) -> None:
    _same_request(wire.decode_infer_request(a.SerializeToString()), a)
    # Two serialised messages back to back are one valid message: scalars take the last value, repeated
    # fields append (the protobuf merge rules), which also puts fields out of their numeric order.
    joined = a.SerializeToString() + b.SerializeToString()
    _same_request(wire.decode_infer_request(joined), node_agent_pb2.InferRequest.FromString(joined))


@settings(max_examples=100, deadline=None)
@given(RESPONSES)
def test_responses_decode_as_protobuf_parses_them(r: node_agent_pb2.InferResponse) -> None:
    got = wire.decode_infer_response(r.SerializeToString())
    assert (got.model_id, got.request_id, got.real_ms, got.emulated_ms, got.queue_ms, got.energy_wh) == (
        r.model_id, r.request_id, r.real_ms, r.emulated_ms, r.queue_ms, r.energy_wh)
    _same_tensors(got.outputs, list(r.outputs))


@settings(max_examples=150, deadline=None)
@given(REQUESTS, st.data())
def test_a_cut_message_fails_or_decodes_exactly_as_protobuf(r: node_agent_pb2.InferRequest, data: st.DataObject
                                                           ) -> None:
    full = r.SerializeToString()
    cut = full[:data.draw(st.integers(0, len(full)))]
    try:
        want = node_agent_pb2.InferRequest.FromString(cut)
    except Exception:  # protobuf's DecodeError
        with pytest.raises(wire.WireError):
            wire.decode_infer_request(cut)
    else:
        _same_request(wire.decode_infer_request(cut), want)


def test_unpacked_shapes_unknown_fields_and_wrong_wire_types() -> None:
    # Tensor{name:"x", shape 2 and -1 unpacked (tag 0x18), an unknown fixed32 field 9, data b"ab"}.
    minus_one = b"\xff" * 9 + b"\x01"
    tensor = b"\x0a\x01x" + b"\x18\x02" + b"\x18" + minus_one + b"\x4d\x00\x00\x00\x00" + b"\x22\x02ab"
    # InferRequest{unknown varint field 20 (two-byte key), model_id "m@1", inputs [tensor], unknown fixed64 6}.
    message = b"\xa0\x01\x05" + b"\x0a\x03m@1" + b"\x12" + bytes([len(tensor)]) + tensor + b"\x31" + b"\0" * 8
    want = node_agent_pb2.InferRequest.FromString(message)
    assert list(want.inputs[0].shape) == [2, -1]
    _same_request(wire.decode_infer_request(message), want)
    with pytest.raises(wire.WireError, match="field 1: wrong wire type 0"):
        wire.decode_infer_request(b"\x08\x01")  # model_id sent as a varint
    with pytest.raises(wire.WireError, match="not UTF-8"):
        wire.decode_infer_request(b"\x0a\x01\xff")
    with pytest.raises(wire.WireError, match="wire type"):
        wire.decode_infer_request(b"\x0b")  # a group


def test_decoded_tensors_view_the_received_bytes() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    message = wire.encode_infer_request("m@1", {"x": x})
    t = wire.decode_infer_request(message).inputs[0]
    assert t.data.obj is message and t.data.readonly
    arr = serde.tensor_to_array(t, "inputs[0]", 1 << 20)
    np.testing.assert_array_equal(arr, x)
    assert not arr.flags.writeable and not arr.flags.owndata


@pytest.mark.parametrize("dtype", sorted(WIRE_DTYPES))
def test_encoders_build_the_messages_serde_builds(dtype: str) -> None:
    base = (np.arange(-12, 12) % 7).reshape(2, 3, 4)
    arrays = {
        "x": base.astype(bool) if dtype == "bool" else base.astype(dtype),
        "big_endian_transposed": np.arange(24, dtype=">f8").reshape(2, 3, 4).transpose(2, 0, 1),
        "empty": np.zeros((0, 3), np.float32),
    }
    request = node_agent_pb2.InferRequest(model_id="m@1", request_id="r-1", simulated_clock=True)
    serde.add_tensors(request.inputs, arrays)
    encoded = wire.encode_infer_request("m@1", arrays, request_id="r-1", simulated_clock=True)
    assert node_agent_pb2.InferRequest.FromString(encoded) == request

    out = InferOutcome(arrays, real_ms=1.5, emulated_ms=7.25, queue_ms=0.5, energy_wh=1e-6)
    encoded = serde.encode_infer_response("m@1", "r-1", out)
    assert node_agent_pb2.InferResponse.FromString(encoded) == serde.infer_response("m@1", "r-1", out)


ARRAYS = st.dictionaries(
    TEXT, st.tuples(st.lists(st.integers(0, 4), max_size=4), st.sampled_from(sorted(WIRE_DTYPES))), max_size=3
).map(lambda specs: {n: np.arange(np.prod(shape, dtype=int)).reshape(shape).astype(dt)
                     for n, (shape, dt) in specs.items()})


@settings(max_examples=100, deadline=None)
@given(TEXT, TEXT, st.booleans(), st.lists(FLOATS, min_size=4, max_size=4), ARRAYS)
def test_encoded_messages_parse_as_protobuf_builds_them(
    model_id: str, request_id: str, simulated_clock: bool, times: list[float], arrays: dict[str, np.ndarray]
) -> None:
    request = node_agent_pb2.InferRequest(model_id=model_id, request_id=request_id, simulated_clock=simulated_clock,
                                          inputs=serde.tensors_from_arrays(arrays))
    encoded = wire.encode_infer_request(model_id, arrays, request_id=request_id, simulated_clock=simulated_clock)
    assert node_agent_pb2.InferRequest.FromString(encoded) == request
    real_ms, emulated_ms, queue_ms, energy_wh = times
    out = InferOutcome(arrays, real_ms=real_ms, emulated_ms=emulated_ms, queue_ms=queue_ms, energy_wh=energy_wh)
    parsed = node_agent_pb2.InferResponse.FromString(serde.encode_infer_response(model_id, request_id, out))
    assert parsed == serde.infer_response(model_id, request_id, out)
    assert [np.copysign(1.0, v) for v in (parsed.real_ms, parsed.energy_wh)] == [
        np.copysign(1.0, v) for v in (real_ms, energy_wh)]  # -0.0 keeps its sign


def test_cached_tensor_prefixes_never_leak_between_names_shapes_or_data() -> None:
    # The prefix before each tensor's data is cached per (name, dtype, shape); the data never is, and the cache
    # is bounded (cleared when full), so more distinct shapes than it holds still encode exactly.
    n = wire._PREFIX_CACHE_ENTRIES + 40
    for i in range(n):
        for name, x in (("x", np.full((1, i + 1), i, np.float32)), ("y", np.full((1, i + 1), -i, np.float32))):
            parsed = node_agent_pb2.InferRequest.FromString(wire.encode_infer_request("m@1", {name: x}))
            np.testing.assert_array_equal(serde.tensor_to_array(parsed.inputs[0], "inputs[0]", 1 << 20), x)
            assert parsed.inputs[0].name == name
        assert len(wire._prefix_cache) <= wire._PREFIX_CACHE_ENTRIES
    a, b = np.zeros((2, 3), np.int64), np.arange(6, dtype=np.int64).reshape(2, 3)
    for arr in (a, b, a.astype(np.int32)):
        parsed = node_agent_pb2.InferRequest.FromString(wire.encode_infer_request("m@1", {"x": arr}))
        assert parsed.inputs[0].dtype == str(arr.dtype)
        np.testing.assert_array_equal(serde.tensor_to_array(parsed.inputs[0], "inputs[0]", 1 << 20), arr)


def test_responses_carry_zero_times_explicitly_and_parse_as_the_defaults() -> None:
    encoded = wire.encode_infer_response("m@1", "", {}, real_ms=0.0, emulated_ms=0.0, queue_ms=0.0, energy_wh=0.0)
    assert node_agent_pb2.InferResponse.FromString(encoded) == node_agent_pb2.InferResponse(model_id="m@1")
    got = wire.decode_infer_response(encoded)
    assert (got.model_id, got.request_id, got.outputs, got.real_ms, got.energy_wh) == ("m@1", "", (), 0.0, 0.0)
