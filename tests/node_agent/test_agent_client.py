"""node_agent.client against a real agent: Infer and InferStream through the copy-free codec."""

from __future__ import annotations

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from agent_harness import RunningAgent
from onnx_builders import BuiltModel

from node_agent.client import INFER_METHOD, AgentClient, channel_options

LOGIT_ATOL = 1e-5


def _reference(model: BuiltModel, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.data, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {model.input_name: x})[0])



def test_infer_returns_the_outputs_and_times(cnn_agent: RunningAgent, small_cnn: BuiltModel) -> None:
    with grpc.insecure_channel(cnn_agent.address, channel_options()) as channel:
        client = AgentClient(channel)
        batch = np.concatenate([small_cnn.tile(seed=1), small_cnn.tile(seed=2)])
        result = client.infer("cnn@1", {small_cnn.input_name: batch}, timeout_s=30, request_id="r-7")
    assert (result.model_id, result.request_id) == ("cnn@1", "r-7")
    assert list(result.outputs) == ["logits"]
    np.testing.assert_allclose(result.outputs["logits"], _reference(small_cnn, batch), atol=LOGIT_ATOL)
    assert not result.outputs["logits"].flags.writeable  # a view of the response, not a copy
    assert result.real_ms > 0 and result.emulated_ms > 0 and result.queue_ms >= 0 and result.energy_wh > 0


def test_infer_stream_answers_every_batch_in_order(cnn_agent: RunningAgent, small_cnn: BuiltModel) -> None:
    tiles = [small_cnn.tile(seed=s) for s in range(6)]
    with grpc.insecure_channel(cnn_agent.address, channel_options()) as channel:
        results = list(AgentClient(channel).infer_stream(
            "cnn@1", ({small_cnn.input_name: t} for t in tiles), timeout_s=30))
    assert [r.request_id for r in results] == [str(i) for i in range(6)]
    for t, r in zip(tiles, results, strict=True):
        np.testing.assert_allclose(r.outputs["logits"], _reference(small_cnn, t), atol=LOGIT_ATOL)


def test_errors_carry_the_agents_status_and_a_malformed_request_is_refused(
    cnn_agent: RunningAgent, small_cnn: BuiltModel
) -> None:
    with grpc.insecure_channel(cnn_agent.address, channel_options()) as channel:
        client = AgentClient(channel)
        with pytest.raises(grpc.RpcError) as err:
            client.infer("nope@1", {small_cnn.input_name: small_cnn.tile()}, timeout_s=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "model_id: 'nope@1' is not loaded on 'sat-1' (loaded: cnn@1)"
        with pytest.raises(grpc.RpcError) as err:
            raw_infer = channel.unary_unary(INFER_METHOD, request_serializer=None, response_deserializer=None)
            raw_infer(b"\x0a\x10truncated", timeout=30)  # model_id: 16 bytes announced, 9 sent
        assert err.value.code() == grpc.StatusCode.INTERNAL
        # The agent keeps serving.
        assert client.infer("cnn@1", {small_cnn.input_name: small_cnn.tile()}, timeout_s=30).outputs
