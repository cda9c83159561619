"""onnxruntime sessions: created once per model, warmed, inputs checked before every run.

Also estimates a model's compute (GFLOP per inference) from the graph as onnxruntime executes it: one
profiled run with graph optimisations off lists every node with its input and output shapes, and the
multiply-accumulates of Conv, ConvTranspose, MatMul and Gemm nodes are counted from those shapes
(2 FLOP per multiply-accumulate). Other operators (activations, pooling, normalisation) are a few percent of a
CNN's FLOPs and are ignored, as in the usual published GFLOP figures. Using onnxruntime's own shape
propagation avoids depending on the ``onnx`` package at run time.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from skyinfer.errors import InputError

log = logging.getLogger(__name__)

# onnxruntime type strings <-> numpy dtypes the agent accepts on the wire.
ORT_TO_NUMPY: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
WIRE_DTYPES = frozenset(ORT_TO_NUMPY.values())
# Dynamic axes get these sizes for the warm-up and FLOP-counting run: batch 1, other axes a typical tile side.
WARMUP_BATCH = 1
WARMUP_OTHER_AXIS = 256


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A declared model input/output: ``shape`` entries are None for dynamic axes (named in ``dim_names``)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    dim_names: tuple[str, ...]

    def shape_text(self) -> str:
        parts = [str(d) if d is not None else (self.dim_names[i] or "?") for i, d in enumerate(self.shape)]
        return "[" + ",".join(parts) + "]"

    def concrete_shape(self) -> tuple[int, ...]:
        return tuple(
            d if d is not None else (WARMUP_BATCH if i == 0 else WARMUP_OTHER_AXIS) for i, d in enumerate(self.shape)
        )


def _spec(arg: Any) -> TensorSpec:
    dtype = ORT_TO_NUMPY.get(arg.type)
    if dtype is None:
        raise InputError(f"model: input/output {arg.name!r}: unsupported type {arg.type}")
    shape: list[int | None] = []
    names: list[str] = []
    for d in arg.shape or []:
        if isinstance(d, int) and d >= 0:
            shape.append(d)
            names.append("")
        else:
            shape.append(None)
            names.append(d if isinstance(d, str) else "")
    return TensorSpec(arg.name, dtype, tuple(shape), tuple(names))


def session_options(threads: int, *, profile_dir: str | None = None) -> ort.SessionOptions:
    """Options shared by the agent and the benchmark's direct session, so both run the same way."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Many agents share one host: idle worker threads must not spin on the cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(profile_dir) / "profile")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # Pre-packed weights vanish from the profile's input shapes; the count needs them.
        so.add_session_config_entry("session.disable_prepacking", "1")
    return so


def open_session(path: Path, threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session; InputError when onnxruntime cannot load the file."""
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated exception types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"model: onnxruntime cannot load it: {first}") from exc


def _shape_of(entry: Mapping[str, Any]) -> list[int]:
    (shape,) = entry.values()
    return [int(x) for x in shape]


def _node_flops(op: str, args: Mapping[str, Any]) -> float:
    ins = [_shape_of(e) for e in args.get("input_type_shape", [])]
    outs = [_shape_of(e) for e in args.get("output_type_shape", [])]
    if not outs:
        return 0.0
    out_numel = math.prod(outs[0])
    if op in ("Conv", "FusedConv"):
        # Weight [C_out, C_in/groups, k...]: every output element is C_in/groups * prod(k) MACs.
        if len(ins) >= 2 and len(ins[1]) >= 2:
            return 2.0 * out_numel * math.prod(ins[1][1:])
        return 0.0
    if op == "ConvTranspose":
        # Weight [C_in, C_out/groups, k...]: every input element scatters into C_out/groups * prod(k) outputs.
        if len(ins) >= 2 and len(ins[1]) >= 2:
            return 2.0 * math.prod(ins[0]) * math.prod(ins[1][1:])
        return 0.0
    if op in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm") and ins and ins[0]:
        # A [..., M, K] @ B [K, N]: K MACs per output element (Gemm assumed with transA = 0).
        return 2.0 * out_numel * ins[0][-1]
    return 0.0


def count_gflop(path: Path, inputs: Mapping[str, np.ndarray]) -> float:
    """GFLOP of one run of the model at ``path`` on ``inputs`` (see module docstring for what is counted)."""
    with tempfile.TemporaryDirectory(prefix="skyinfer-flops-") as tmp:
        so = session_options(1, profile_dir=tmp)
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        sess.run(None, dict(inputs))
        events = json.loads(Path(sess.end_profiling()).read_text())
    flops = 0.0
    for ev in events:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            args = ev.get("args", {})
            flops += _node_flops(str(args.get("op_name", "")), args)
    return flops / 1e9


class ModelRuntime:
    """One loaded model: its warmed session and declared inputs/outputs. ``run`` is thread-safe."""

    def __init__(self, path: Path, threads: int) -> None:
        self.session = open_session(path, threads)
        self.inputs = tuple(_spec(a) for a in self.session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self.session.get_outputs())
        self.output_names = [o.name for o in self.outputs]
        # Looked up on every call: built once (spec and numpy dtype by input name).
        self._specs_by_name = {s.name: (s, np.dtype(s.dtype)) for s in self.inputs}
        self.warmup_feeds = {s.name: np.zeros(s.concrete_shape(), dtype=s.dtype) for s in self.inputs}
        self.reference_numel = math.prod(self.inputs[0].concrete_shape()) if self.inputs else 1
        t0 = time.perf_counter()
        try:
            self.session.run(self.output_names, self.warmup_feeds)
        except Exception as exc:
            raise InputError(f"model: warm-up run failed: {str(exc).strip().splitlines()[0]}") from exc
        self.warmup_ms = (time.perf_counter() - t0) * 1e3

    def check(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise InputError naming the first input whose name, dtype or shape the model does not accept."""
        specs = self._specs_by_name
        for i, name in enumerate(feeds):
            if name not in specs:
                raise InputError(f"inputs[{i}].name: model has no input {name!r} (inputs: {sorted(specs)})")
        for spec in self.inputs:
            if spec.name not in feeds:
                raise InputError(f"inputs: missing input {spec.name!r}")
        for i, (name, arr) in enumerate(feeds.items()):
            spec, dtype = specs[name]
            if arr.dtype != dtype:
                raise InputError(f"inputs[{i}].dtype: {name!r} expected {spec.dtype}, got {arr.dtype}")
            if len(arr.shape) != len(spec.shape) or any(
                d is not None and d != g for d, g in zip(spec.shape, arr.shape, strict=True)
            ):
                got = "[" + ",".join(str(d) for d in arr.shape) + "]"
                raise InputError(f"inputs[{i}].shape: {name!r} expected {spec.shape_text()}, got {got}")
            if 0 in arr.shape:
                got = "[" + ",".join(str(d) for d in arr.shape) + "]"
                raise InputError(f"inputs[{i}].shape: {name!r} has an empty axis: {got}")

    def work_scale(self, feeds: Mapping[str, np.ndarray]) -> float:
        """How many reference-size inferences ``feeds`` amount to (batch or dynamic spatial axes scale work)."""
        if not self.inputs:
            return 1.0
        return float(np.asarray(feeds[self.inputs[0].name]).size) / self.reference_numel

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Every output is a tensor (``_spec`` refuses other types at load), so onnxruntime returns numpy arrays,
        # one per requested name.
        outs = self.session.run(self.output_names, feeds if type(feeds) is dict else dict(feeds))
        return dict(zip(self.output_names, outs, strict=True))
