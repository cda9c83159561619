"""The one place where protos meet the agent's domain types (numpy arrays, ModelInfo, AgentStatus).

Tensors arrive either as generated ``tensor_pb2.Tensor`` messages (Fleet work, tests, other clients' code) or as
:class:`node_agent.wire.WireTensor` views (the ``Infer`` / ``InferStream`` RPCs, decoded without copying); both
are checked and turned into arrays by the same :func:`tensor_to_array`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from node_agent import wire
from node_agent.agent import AgentStatus, InferOutcome, ModelInfo
from node_agent.errors import LimitError
from node_agent.runtime import WIRE_DTYPES, TensorSpec
from skyinfer.errors import InputError
from skyinfer.v1 import fleet_pb2, node_agent_pb2, tensor_pb2

MAX_RANK = 8


# Wire dtype name -> (the little-endian dtype of the bytes, the dtype handed to onnxruntime), built once:
# np.dtype() and newbyteorder() on every call are measurable next to a ~1 ms model.
_WIRE_DTYPES: dict[str, tuple[np.dtype, np.dtype]] = {
    name: (np.dtype(name).newbyteorder("<"), np.dtype(name)) for name in WIRE_DTYPES
}


AnyTensor = tensor_pb2.Tensor | wire.WireTensor


def tensor_to_array(t: AnyTensor, where: str, max_bytes: int) -> np.ndarray:
    """A numpy array (a read-only view of the tensor's bytes) after checking dtype, shape and size."""
    dtypes = _WIRE_DTYPES.get(t.dtype)
    if dtypes is None:
        raise InputError(f"{where}.dtype: expected one of {sorted(WIRE_DTYPES)}, got {t.dtype!r}")
    wire_dtype, native_dtype = dtypes
    # A WireTensor's shape is already a tuple of ints; a protobuf repeated field becomes one.
    shape = t.shape if isinstance(t.shape, tuple) else tuple(t.shape)
    if len(shape) > MAX_RANK or min(shape, default=0) < 0:
        raise InputError(f"{where}.shape: expected up to {MAX_RANK} non-negative sizes, got {list(shape)}")
    data = t.data  # each attribute access copies the bytes out of a protobuf message: read it once
    if len(data) > max_bytes:
        raise LimitError(f"{where}.data: {len(data)} bytes over the tensor size limit {max_bytes} bytes")
    expected = math.prod(shape) * wire_dtype.itemsize
    if len(data) != expected:
        raise InputError(
            f"{where}.data: {len(data)} bytes, but shape {list(shape)} of {t.dtype} needs {expected} bytes"
        )
    arr = np.frombuffer(data, dtype=wire_dtype).reshape(shape)
    # On a little-endian host the wire dtype is the native one: no conversion, the view is returned as is.
    return arr if wire_dtype == native_dtype else arr.astype(native_dtype)


def _encode(arr: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    """(wire dtype name, shape, little-endian C-order bytes) of ``arr``: one copy of the data."""
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return wire.dtype_name(a.dtype), a.shape, a.tobytes()


def array_to_tensor(name: str, arr: np.ndarray) -> tensor_pb2.Tensor:
    dtype, shape, data = _encode(arr)
    return tensor_pb2.Tensor(name=name, dtype=dtype, shape=shape, data=data)


def feeds_from_protos(tensors: Sequence[AnyTensor], max_bytes: int) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for i, t in enumerate(tensors):
        where = f"inputs[{i}]"
        if not t.name:
            raise InputError(f"{where}.name: must not be empty")
        if t.name in feeds:
            raise InputError(f"{where}.name: input {t.name!r} given twice")
        feeds[t.name] = tensor_to_array(t, where, max_bytes)
    return feeds


def tensors_from_arrays(arrays: Mapping[str, np.ndarray]) -> list[tensor_pb2.Tensor]:
    return [array_to_tensor(n, a) for n, a in arrays.items()]


def add_tensors(container: RepeatedCompositeFieldContainer[tensor_pb2.Tensor], arrays: Mapping[str, np.ndarray]
                ) -> None:
    """Append ``arrays`` to a message's repeated Tensor field (``request.inputs``, ``response.outputs``).

    Built in place: handing finished Tensor messages to a constructor or ``extend`` copies every tensor's
    bytes once more, which is measurable for megabyte tiles.
    """
    for name, arr in arrays.items():
        dtype, shape, data = _encode(arr)
        container.add(name=name, dtype=dtype, shape=shape, data=data)


def spec_to_proto(s: TensorSpec) -> tensor_pb2.TensorSpec:
    return tensor_pb2.TensorSpec(
        name=s.name, dtype=s.dtype, shape=[-1 if d is None else d for d in s.shape], dim_names=list(s.dim_names)
    )


def model_info_to_proto(m: ModelInfo) -> node_agent_pb2.ModelInfo:
    return node_agent_pb2.ModelInfo(
        model_id=m.model_id, sha256=m.sha256, size_bytes=m.size_bytes, memory_bytes=m.memory_bytes,
        gflop_per_inference=m.gflop_per_inference, inputs=[spec_to_proto(s) for s in m.inputs],
        outputs=[spec_to_proto(s) for s in m.outputs], warmup_ms=m.warmup_ms,
        emulated_ms_per_inference=m.emulated_ms_per_inference,
    )


def status_to_proto(s: AgentStatus, results_pending: int = 0) -> fleet_pb2.NodeStatus:
    return fleet_pb2.NodeStatus(
        node_id=s.node_id, profile=s.profile, slots_total=s.slots_total, slots_in_use=s.slots_in_use,
        queue_length=s.queue_length, energy_used_wh=s.energy_used_wh, link_up=s.link_up, models=list(s.models),
        memory_used_bytes=s.memory_used_bytes, memory_total_bytes=s.memory_total_bytes,
        results_pending=results_pending, serving=s.serving, inferences_total=s.inferences_total,
        compute_gflops=s.compute_gflops,
    )


def infer_response(model_id: str, request_id: str, out: InferOutcome) -> node_agent_pb2.InferResponse:
    resp = node_agent_pb2.InferResponse(
        model_id=model_id, request_id=request_id, real_ms=out.real_ms, emulated_ms=out.emulated_ms,
        queue_ms=out.queue_ms, energy_wh=out.energy_wh,
    )
    add_tensors(resp.outputs, out.outputs)
    return resp


def encode_infer_response(model_id: str, request_id: str, out: InferOutcome) -> bytes:
    """The serialised ``InferResponse`` of ``out`` (what :func:`infer_response` builds, without its copies)."""
    return wire.encode_infer_response(
        model_id, request_id, out.outputs, real_ms=out.real_ms, emulated_ms=out.emulated_ms, queue_ms=out.queue_ms,
        energy_wh=out.energy_wh,
    )


@dataclass(frozen=True, slots=True)
class LoadHeader:
    """The first LoadModel chunk's metadata."""

    model_id: str
    sha256: str
    total_size_bytes: int
    path: str
    memory_bytes: int
    gflop_per_inference: float


def split_load_stream(
    chunks: Iterator[node_agent_pb2.LoadModelChunk],
) -> tuple[LoadHeader, Iterable[bytes]]:
    """The header from the first chunk and an iterator over the data of all chunks (lazy: streams to disk)."""
    first = next(chunks, None)
    if first is None:
        raise InputError("LoadModel: empty stream (the first chunk must carry model_id and sha256)")
    if not first.model_id:
        raise InputError("model_id: required in the first chunk")
    if first.gflop_per_inference < 0 or not math.isfinite(first.gflop_per_inference):
        raise InputError(f"gflop_per_inference: must be a finite number >= 0, got {first.gflop_per_inference}")
    header = LoadHeader(
        first.model_id, first.sha256, first.total_size_bytes, first.path, first.memory_bytes,
        first.gflop_per_inference,
    )
    if header.path and first.data:
        raise InputError("path: give either path or data, not both")

    def data() -> Iterator[bytes]:
        if first.data:
            yield first.data
        for c in chunks:
            if c.model_id and c.model_id != header.model_id:
                raise InputError(f"model_id: later chunk names {c.model_id!r}, first named {header.model_id!r}")
            yield c.data

    return header, data()
