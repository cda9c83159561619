"""InferSession (lock-step inferences over one call) against a real agent on port 0, through AgentClient.session
and through the generated stub."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from agent_harness import RunningAgent, upload
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx_builders import BuiltModel
from test_agent_service import infer_request, reference

from node_agent.client import INFER_SESSION_METHOD, AgentClient, InferSession, channel_options
from node_agent.service import max_sessions, rpc_workers

LOGIT_ATOL = 1e-5



def _open_when_free(client: AgentClient, model_id: str, model: BuiltModel) -> InferSession:
    """A session with one call answered, opened once the agent has a place for it: the agent frees a place
    when its handler sees the previous call end, which can be just after the caller has heard of the end."""
    deadline = time.monotonic() + 10
    while True:
        session = client.session(timeout_s=60)
        try:
            assert session.infer(model_id, {model.input_name: model.tile()}).outputs
            return session
        except grpc.RpcError as exc:
            session.close()
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
            time.sleep(0.05)


def _unary_error(client: AgentClient, model_id: str, inputs: dict[str, np.ndarray]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        client.infer(model_id, inputs, timeout_s=30)
    return err.value


def test_a_session_answers_each_call_with_its_own_outputs(cnn_agent: RunningAgent, small_cnn: BuiltModel) -> None:
    with grpc.insecure_channel(cnn_agent.address, channel_options()) as channel, \
            AgentClient(channel).session(timeout_s=60) as session:
        for seed in range(5):
            tile = small_cnn.tile(seed=seed)
            result = session.infer("cnn@1", {small_cnn.input_name: tile}, request_id=f"r-{seed}")
            assert (result.model_id, result.request_id) == ("cnn@1", f"r-{seed}")
            np.testing.assert_allclose(result.outputs["logits"], reference(small_cnn, tile), atol=LOGIT_ATOL)
            assert result.real_ms > 0 and result.emulated_ms > 0 and result.energy_wh > 0
    assert cnn_agent.deps.agent.status().slots_in_use == 0


def test_a_failing_call_raises_what_a_unary_call_raises_and_the_session_goes_on(
    cnn_agent: RunningAgent, small_cnn: BuiltModel
) -> None:
    wrong_shape = {small_cnn.input_name: np.zeros((1, 6, 32, 32), np.float32)}
    unknown = {small_cnn.input_name: small_cnn.tile()}
    with grpc.insecure_channel(cnn_agent.address, channel_options()) as channel:
        client = AgentClient(channel)
        with client.session(timeout_s=60) as session:
            session.infer("cnn@1", {small_cnn.input_name: small_cnn.tile()})
            for model_id, inputs, code in (("cnn@1", wrong_shape, grpc.StatusCode.INVALID_ARGUMENT),
                                           ("nope@1", unknown, grpc.StatusCode.NOT_FOUND)):
                expected = _unary_error(client, model_id, inputs)
                assert expected.code() == code
                with pytest.raises(grpc.RpcError) as err:
                    session.infer(model_id, inputs)
                assert (err.value.code(), err.value.details()) == (expected.code(), expected.details())
                # The next call opens a new call on the agent and is answered.
                tile = small_cnn.tile(seed=9)
                result = session.infer("cnn@1", {small_cnn.input_name: tile})
                np.testing.assert_allclose(result.outputs["logits"], reference(small_cnn, tile), atol=LOGIT_ATOL)


def test_an_expired_session_call_fails_once_then_a_new_call_is_opened(
    cnn_agent: RunningAgent, small_cnn: BuiltModel
) -> None:
    inputs = {small_cnn.input_name: small_cnn.tile()}
    with grpc.insecure_channel(cnn_agent.address, channel_options()) as channel, \
            AgentClient(channel).session(timeout_s=0.5) as session:
        session.infer("cnn@1", inputs)
        time.sleep(0.8)
        with pytest.raises(grpc.RpcError) as err:
            session.infer("cnn@1", inputs)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert session.infer("cnn@1", inputs).outputs["logits"].shape == (1, 4)


def test_concurrent_callers_share_a_session_in_lock_step(cnn_agent: RunningAgent, small_cnn: BuiltModel) -> None:
    failures: list[str] = []

    def caller(session: InferSession, worker: int) -> None:
        for k in range(8):
            seed = 100 * worker + k
            tile = small_cnn.tile(seed=seed)
            result = session.infer("cnn@1", {small_cnn.input_name: tile}, request_id=str(seed))
            if result.request_id != str(seed) or not np.allclose(
                    result.outputs["logits"], reference(small_cnn, tile), atol=LOGIT_ATOL):
                failures.append(f"worker {worker} call {k}: got the answer of request {result.request_id}")

    with grpc.insecure_channel(cnn_agent.address, channel_options()) as channel, \
            AgentClient(channel).session(timeout_s=60) as session:
        threads = [threading.Thread(target=caller, args=(session, w)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert failures == []


def test_a_closed_session_refuses_calls(cnn_agent: RunningAgent, small_cnn: BuiltModel) -> None:
    with grpc.insecure_channel(cnn_agent.address, channel_options()) as channel:
        session = AgentClient(channel).session()
        session.infer("cnn@1", {small_cnn.input_name: small_cnn.tile()})
        session.close()
        with pytest.raises(ValueError, match="closed"):
            session.infer("cnn@1", {small_cnn.input_name: small_cnn.tile()})
        # The agent ended its side of the call and keeps serving.
        assert AgentClient(channel).infer("cnn@1", {small_cnn.input_name: small_cnn.tile()}, timeout_s=30).outputs


def test_the_generated_stub_drives_a_session_and_errors_carry_no_request_index(
    cnn_agent: RunningAgent, small_cnn: BuiltModel
) -> None:
    good = [infer_request("cnn@1", small_cnn, small_cnn.tile(seed=s)) for s in range(3)]
    responses = list(cnn_agent.stub.InferSession(iter(good), timeout=30))
    assert len(responses) == 3
    for s, r in enumerate(responses):
        got = np.frombuffer(r.outputs[0].data, np.float32).reshape(1, 4)
        np.testing.assert_allclose(got, reference(small_cnn, small_cnn.tile(seed=s)), atol=LOGIT_ATOL)
    bad = infer_request("nope@1", small_cnn)
    call = cnn_agent.stub.InferSession(iter([good[0], bad, good[1]]), timeout=30)
    assert next(call).outputs
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details().startswith("model_id: 'nope@1' is not loaded")


def test_open_sessions_are_limited_so_other_calls_keep_their_threads(
    cnn_agent: RunningAgent, small_cnn: BuiltModel
) -> None:
    limit = max_sessions(rpc_workers(cnn_agent.config.profile.slots))
    inputs = {small_cnn.input_name: small_cnn.tile()}
    with grpc.insecure_channel(cnn_agent.address, channel_options()) as channel:
        client = AgentClient(channel)
        sessions = [client.session(timeout_s=60) for _ in range(limit)]
        try:
            for session in sessions:
                session.infer("cnn@1", inputs)  # each call is open on the agent now
            with client.session(timeout_s=60) as extra, pytest.raises(grpc.RpcError) as err:
                extra.infer("cnn@1", inputs)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.value.details() == (f"sessions: {limit} open, at most {limit} on this agent; "
                                           "close one or call Infer")
            # Health, unary calls and model listing still get a thread.
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert client.infer("cnn@1", inputs, timeout_s=30).outputs
            sessions.pop().close()
            _open_when_free(client, "cnn@1", small_cnn).close()
        finally:
            for session in sessions:
                session.close()


def test_a_session_outlives_an_agent_restart(start_agent: Callable[..., RunningAgent], small_cnn: BuiltModel,
                                             tmp_path: Path) -> None:
    first: RunningAgent = start_agent(models_dir=tmp_path / "store")
    upload(first.stub, "cnn@1", small_cnn)
    address = first.address
    tile = small_cnn.tile(seed=4)
    with grpc.insecure_channel(address, channel_options()) as channel, \
            AgentClient(channel).session(timeout_s=60) as session:
        session.infer("cnn@1", {small_cnn.input_name: tile})
        first.stop()  # the open call breaks with the agent
        with pytest.raises(grpc.RpcError) as err:
            session.infer("cnn@1", {small_cnn.input_name: tile})
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        start_agent(models_dir=tmp_path / "store", listen=address)  # same port, model from its store
        deadline = time.monotonic() + 20
        while True:  # the channel reconnects on its own schedule
            try:
                result = session.infer("cnn@1", {small_cnn.input_name: tile})
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                time.sleep(0.1)
        np.testing.assert_allclose(result.outputs["logits"], reference(small_cnn, tile), atol=LOGIT_ATOL)


def test_a_malformed_message_ends_the_session_with_internal_and_frees_its_place(
    cnn_agent: RunningAgent, small_cnn: BuiltModel
) -> None:
    limit = max_sessions(rpc_workers(cnn_agent.config.profile.slots))
    good = infer_request("cnn@1", small_cnn).SerializeToString()
    with grpc.insecure_channel(cnn_agent.address, channel_options()) as channel:
        raw = channel.stream_stream(INFER_SESSION_METHOD, request_serializer=None, response_deserializer=None)
        for _ in range(limit + 1):  # more than the limit: each broken session must have given its place back
            call = raw(iter([good, b"\x0a\x10truncated"]), timeout=30)  # model_id: 16 bytes announced, 9 sent
            assert next(call)
            with pytest.raises(grpc.RpcError) as err:
                next(call)
            assert err.value.code() == grpc.StatusCode.INTERNAL
        sessions: list[InferSession] = []
        try:
            for _ in range(limit):
                sessions.append(_open_when_free(AgentClient(channel), "cnn@1", small_cnn))
        finally:
            for session in sessions:
                session.close()
