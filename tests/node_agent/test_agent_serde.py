"""Tensor encoding between numpy and the wire: every wire dtype, byte order, memory layout, and the response."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from node_agent import serde
from node_agent.agent import InferOutcome
from node_agent.runtime import WIRE_DTYPES
from node_agent.service import tune_malloc
from skyinfer.errors import InputError
from skyinfer.v1 import node_agent_pb2, tensor_pb2


def _sample(dtype: str) -> np.ndarray:
    values = np.arange(-12, 12).reshape(2, 3, 4) % 7
    return values.astype(bool) if dtype == "bool" else values.astype(dtype)


@pytest.mark.parametrize("dtype", sorted(WIRE_DTYPES))
def test_every_wire_dtype_round_trips_as_a_read_only_native_view(dtype: str) -> None:
    x = _sample(dtype)
    wire = tensor_pb2.Tensor.FromString(serde.array_to_tensor("x", x).SerializeToString())
    assert (wire.name, wire.dtype, list(wire.shape)) == ("x", dtype, [2, 3, 4])
    got = serde.tensor_to_array(wire, "inputs[0]", 1 << 20)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, x)
    assert not got.flags.writeable  # a view of the message's bytes, not a copy


def test_big_endian_and_non_contiguous_arrays_are_sent_little_endian_c_order() -> None:
    x = np.arange(24, dtype=">f4").reshape(2, 3, 4).transpose(2, 0, 1)
    t = serde.array_to_tensor("x", x)
    assert t.dtype == "float32" and list(t.shape) == [4, 2, 3]
    assert t.data == np.ascontiguousarray(x, dtype="<f4").tobytes()
    np.testing.assert_array_equal(serde.tensor_to_array(t, "x", 1 << 20), x)


def test_infer_response_carries_every_output_and_the_timings() -> None:
    outputs = {"mask": np.arange(12, dtype=">i8").reshape(3, 4), "logits": np.ones((2, 5), np.float32, order="F")}
    out = InferOutcome(outputs, real_ms=1.5, emulated_ms=7.25, queue_ms=0.5, energy_wh=1e-6)
    resp = node_agent_pb2.InferResponse.FromString(serde.infer_response("cnn@1", "r-1", out).SerializeToString())
    assert (resp.model_id, resp.request_id) == ("cnn@1", "r-1")
    assert (resp.real_ms, resp.emulated_ms, resp.queue_ms, resp.energy_wh) == (1.5, 7.25, 0.5, 1e-6)
    assert [t.name for t in resp.outputs] == ["mask", "logits"]
    assert [t.dtype for t in resp.outputs] == ["int64", "float32"]
    for i, (name, arr) in enumerate(outputs.items()):
        np.testing.assert_array_equal(serde.tensor_to_array(resp.outputs[i], name, 1 << 20), arr)
    assert resp == node_agent_pb2.InferResponse(
        model_id="cnn@1", request_id="r-1", real_ms=1.5, emulated_ms=7.25, queue_ms=0.5, energy_wh=1e-6,
        outputs=[serde.array_to_tensor(n, a) for n, a in outputs.items()],
    )


def test_tensor_errors_name_the_field() -> None:
    t = serde.array_to_tensor("x", np.zeros((2, 2), np.float32))
    t.dtype = "complex64"
    with pytest.raises(InputError, match=r"^inputs\[0\]\.dtype: expected one of .*, got 'complex64'$"):
        serde.tensor_to_array(t, "inputs[0]", 1 << 20)
    t.dtype = "float64"
    with pytest.raises(InputError, match=r"^inputs\[0\]\.data: 16 bytes, but shape \[2, 2\] of float64 needs 32"):
        serde.tensor_to_array(t, "inputs[0]", 1 << 20)


def test_tune_malloc_applies_on_glibc() -> None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert tune_malloc() is False
        pytest.skip(f"not glibc ({platform.system()} {platform.libc_ver()}): tune_malloc is a no-op there")
    assert tune_malloc() is True


def test_add_tensors_builds_the_same_request_as_finished_tensors() -> None:
    arrays = {"x": np.arange(6, dtype=">f8").reshape(2, 3), "mask": np.ones((4,), bool)}
    request = node_agent_pb2.InferRequest(model_id="cnn@1")
    serde.add_tensors(request.inputs, arrays)
    assert request == node_agent_pb2.InferRequest(model_id="cnn@1", inputs=serde.tensors_from_arrays(arrays))
    feeds = serde.feeds_from_protos(request.inputs, 1 << 20)
    assert list(feeds) == ["x", "mask"]
    for name, arr in arrays.items():
        np.testing.assert_array_equal(feeds[name], arr)
