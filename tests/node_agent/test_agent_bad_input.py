"""Every bad input is a clear gRPC error naming the problem, and the agent keeps serving its models."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from agent_harness import RunningAgent, chunks_of, upload
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx_builders import BuiltModel

from node_agent import serde
from skyinfer.v1 import node_agent_pb2, tensor_pb2


def _error(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, timeout=30, **kw)
    return err.value


@pytest.fixture
def agent(start_agent, small_cnn) -> RunningAgent:
    a: RunningAgent = start_agent(max_tensor_bytes=100_000)
    upload(a.stub, "cnn@1", small_cnn)
    return a


def _still_serving(agent: RunningAgent, model: BuiltModel) -> None:
    resp = agent.stub.Infer(node_agent_pb2.InferRequest(
        model_id="cnn@1", inputs=[serde.array_to_tensor("x", model.tile())]), timeout=30)
    assert resp.outputs[0].name == "logits"
    models = agent.stub.ListModels(node_agent_pb2.ListModelsRequest(), timeout=5).models
    assert [m.model_id for m in models] == ["cnn@1"]
    health = health_pb2_grpc.HealthStub(agent.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def _infer(agent: RunningAgent, model_id: str, *tensors: tensor_pb2.Tensor) -> grpc.RpcError:
    return _error(agent.stub.Infer, node_agent_pb2.InferRequest(model_id=model_id, inputs=list(tensors)))


def test_unknown_model(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    err = _infer(agent, "nope@1", serde.array_to_tensor("x", small_cnn.tile()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "model_id: 'nope@1' is not loaded on 'sat-1' (loaded: cnn@1)"
    _still_serving(agent, small_cnn)


def test_wrong_shape_names_the_field_and_both_shapes(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    x = np.zeros((1, 6, 32, 32), np.float32)
    err = _infer(agent, "cnn@1", serde.array_to_tensor("x", x))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "inputs[0].shape: 'x' expected [N,3,32,32], got [1,6,32,32]"
    err = _infer(agent, "cnn@1", serde.array_to_tensor("x", np.zeros((3, 32, 32), np.float32)))
    assert err.details() == "inputs[0].shape: 'x' expected [N,3,32,32], got [3,32,32]"
    _still_serving(agent, small_cnn)


def test_wrong_dtype_and_wrong_name(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    err = _infer(agent, "cnn@1", serde.array_to_tensor("x", small_cnn.tile().astype(np.float64)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "inputs[0].dtype: 'x' expected float32, got float64"
    err = _infer(agent, "cnn@1", serde.array_to_tensor("image", small_cnn.tile()))
    assert err.details() == "inputs[0].name: model has no input 'image' (inputs: ['x'])"
    bogus = tensor_pb2.Tensor(name="x", dtype="complex64", shape=[1], data=b"\0" * 8)
    assert _infer(agent, "cnn@1", bogus).details().startswith("inputs[0].dtype: expected one of")
    short = tensor_pb2.Tensor(name="x", dtype="float32", shape=[1, 3, 32, 32], data=b"\0" * 100)
    assert _infer(agent, "cnn@1", short).details() == (
        "inputs[0].data: 100 bytes, but shape [1, 3, 32, 32] of float32 needs 12288 bytes"
    )
    _still_serving(agent, small_cnn)


def test_tensor_over_the_size_limit(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    big = np.zeros((10, 3, 32, 32), np.float32)  # 122,880 bytes > the 100,000-byte limit of this agent
    err = _infer(agent, "cnn@1", serde.array_to_tensor("x", big))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == "inputs[0].data: 122880 bytes over the tensor size limit 100000 bytes"
    _still_serving(agent, small_cnn)


def test_truncated_model_bytes(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    cut = small_cnn.data[: len(small_cnn.data) // 2]
    err = _error(agent.stub.LoadModel, chunks_of("cut@1", cut, small_cnn.sha256, total=len(small_cnn.data)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == f"data: truncated: received {len(cut)} of {len(small_cnn.data)} bytes"
    assert not (agent.config.models_dir / "cut@1").exists()
    _still_serving(agent, small_cnn)


def test_sha256_mismatch(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    tampered = bytearray(small_cnn.data)
    tampered[-10] ^= 0x01
    err = _error(agent.stub.LoadModel, chunks_of("t@1", bytes(tampered), small_cnn.sha256))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"sha256: mismatch: declared {small_cnn.sha256}, data hashes to ")
    _still_serving(agent, small_cnn)


def test_file_onnxruntime_cannot_load(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    import hashlib

    junk = b"this is not an ONNX model" * 40  # right sha256 for these bytes, but not a model
    err = _error(agent.stub.LoadModel, chunks_of("junk@1", junk, hashlib.sha256(junk).hexdigest()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("model: onnxruntime cannot load it: ")
    # Corrupted inside (a valid protobuf prefix, broken graph) with a matching sha256.
    broken = small_cnn.data[: len(small_cnn.data) - 200]
    err = _error(agent.stub.LoadModel, chunks_of("broken@1", broken, hashlib.sha256(broken).hexdigest()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "onnxruntime cannot load it" in err.details()
    assert sorted(p.name for p in agent.config.models_dir.iterdir() if not p.name.startswith(".")) == ["cnn@1"]
    _still_serving(agent, small_cnn)


def test_size_and_memory_limits(start_agent, small_cnn: BuiltModel) -> None:
    agent: RunningAgent = start_agent(profile="cubesat", max_model_bytes=1_000_000)
    upload(agent.stub, "cnn@1", small_cnn)
    err = _error(agent.stub.LoadModel, chunks_of("huge@1", b"x" * 16, "0" * 64, total=2_000_000))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details() == "total_size_bytes: 2000000 bytes over the model size limit 1000000 bytes"
    # The CubeSat has 2 GiB: a model declaring 3 GiB of resident memory does not fit.
    err = _error(agent.stub.LoadModel, chunks_of("fat@1", small_cnn.data, small_cnn.sha256, memory_bytes=3 << 30))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.details().startswith("memory_bytes: model 'fat@1' needs 3221225472 bytes but only ")
    _still_serving(agent, small_cnn)


def test_bad_ids_and_conflicts(agent: RunningAgent, small_cnn: BuiltModel) -> None:
    err = _error(agent.stub.LoadModel, chunks_of("../etc@1", small_cnn.data, small_cnn.sha256))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("model_id: expected name@")
    err = _error(agent.stub.LoadModel, chunks_of("x@1", small_cnn.data, "abc"))
    assert err.details() == "sha256: expected 64 hex digits, got 'abc'"
    other = bytearray(small_cnn.data)
    other[-10] ^= 0x01
    import hashlib

    err = _error(agent.stub.LoadModel, chunks_of("cnn@1", bytes(other), hashlib.sha256(other).hexdigest()))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    err = _error(agent.stub.UnloadModel, node_agent_pb2.UnloadModelRequest(model_id="nope@1"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    _still_serving(agent, small_cnn)
