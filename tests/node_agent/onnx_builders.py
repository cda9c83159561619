"""Small real CNNs built with onnx.helper (deterministic weights) and their FLOPs counted by hand."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True, slots=True)
class BuiltModel:
    data: bytes
    input_name: str
    input_shape: tuple[int, ...]  # one tile (batch 1)
    gflop: float  # hand count: 2 x MACs of Conv and Gemm nodes
    classes: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def tile(self, seed: int = 1) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(self.input_shape).astype(np.float32)


def build_cnn(
    in_channels: int = 3, side_px: int = 32, channels: tuple[int, ...] = (8, 16), classes: int = 4, seed: int = 0,
    dynamic_batch: bool = True,
) -> BuiltModel:
    """Conv3x3(pad 1)+Relu per entry of ``channels``, GlobalAveragePool, Flatten, Gemm to ``classes`` logits."""
    rng = np.random.default_rng(seed)
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    prev, c_in, macs = "x", in_channels, 0
    for i, c_out in enumerate(channels):
        w = (rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        macs += c_out * side_px * side_px * c_in * 9
        prev, c_in = f"r{i}", c_out
    g = (rng.standard_normal((c_in, classes)) / np.sqrt(c_in)).astype(np.float32)
    inits.append(numpy_helper.from_array(g, "g"))
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["logits"]),
    ]
    macs += c_in * classes
    batch: int | str = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_channels, side_px, side_px])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="skyinfer-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return BuiltModel(model.SerializeToString(), "x", (1, in_channels, side_px, side_px), 2 * macs / 1e9, classes)
