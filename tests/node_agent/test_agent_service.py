"""NodeAgent over real gRPC: load, list, infer, stream, status, health, reflection, emulation."""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from agent_harness import RunningAgent, upload
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from onnx_builders import BuiltModel, build_cnn

from node_agent import serde
from scheduler.types import BUILTIN_PROFILES
from skyinfer.v1 import fleet_pb2, node_agent_pb2

# onnxruntime in the agent and in the test run the same graph: results agree to float32 rounding.
LOGIT_ATOL = 1e-5
GFLOP_RTOL = 1e-9


def infer_request(model_id: str, model: BuiltModel, arr: np.ndarray | None = None, **kw: object
                  ) -> node_agent_pb2.InferRequest:
    x = model.tile() if arr is None else arr
    return node_agent_pb2.InferRequest(model_id=model_id, inputs=[serde.array_to_tensor(model.input_name, x)], **kw)


def reference(model: BuiltModel, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.data, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {model.input_name: x})[0])


def test_health_is_not_serving_until_the_store_is_loaded(start_agent, small_cnn) -> None:
    agent: RunningAgent = start_agent(serving=False)
    health = health_pb2_grpc.HealthStub(agent.channel)
    for service in ("", "skyinfer.v1.NodeAgent"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING
    agent.deps.agent.load_store()
    from node_agent.service import set_serving
    set_serving(agent.deps, True)
    resp = health.Check(health_pb2.HealthCheckRequest(service="skyinfer.v1.NodeAgent"), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert agent.stub.GetStatus(node_agent_pb2.GetStatusRequest(), timeout=5).serving


def test_reflection_lists_the_services(start_agent) -> None:
    agent: RunningAgent = start_agent()
    stub = reflection_pb2_grpc.ServerReflectionStub(agent.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"skyinfer.v1.NodeAgent", "grpc.health.v1.Health"} <= names


def test_load_list_infer_matches_onnxruntime(start_agent, small_cnn) -> None:
    agent: RunningAgent = start_agent()
    info = upload(agent.stub, "cnn@1", small_cnn)
    assert info.model_id == "cnn@1" and info.sha256 == small_cnn.sha256
    assert info.size_bytes == len(small_cnn.data) == info.memory_bytes
    assert info.gflop_per_inference == pytest.approx(small_cnn.gflop, rel=GFLOP_RTOL)
    assert [(s.name, s.dtype, list(s.shape), s.dim_names[0]) for s in info.inputs] == [
        ("x", "float32", [-1, 3, 32, 32], "N")
    ]
    listed = agent.stub.ListModels(node_agent_pb2.ListModelsRequest(), timeout=5).models
    assert [m.model_id for m in listed] == ["cnn@1"]

    x = small_cnn.tile(seed=7)
    resp = agent.stub.Infer(infer_request("cnn@1", small_cnn, x, request_id="r1"), timeout=30)
    assert resp.request_id == "r1" and [o.name for o in resp.outputs] == ["logits"]
    got = serde.tensor_to_array(resp.outputs[0], "outputs[0]", 1 << 20)
    np.testing.assert_allclose(got, reference(small_cnn, x), atol=LOGIT_ATOL)
    # A batch of 3 along the dynamic axis: three tiles of work, same per-tile answers.
    batch = np.concatenate([small_cnn.tile(seed=s) for s in (1, 2, 3)])
    resp3 = agent.stub.Infer(infer_request("cnn@1", small_cnn, batch), timeout=30)
    assert resp3.emulated_ms == pytest.approx(3 * resp.emulated_ms)
    np.testing.assert_allclose(serde.tensor_to_array(resp3.outputs[0], "o", 1 << 20), reference(small_cnn, batch),
                               atol=LOGIT_ATOL)


def test_emulated_time_and_energy_follow_the_profile(start_agent, small_cnn) -> None:
    profile = BUILTIN_PROFILES["cubesat"]
    agent: RunningAgent = start_agent(profile="cubesat")
    # Declare 2 GFLOP so the CubeSat (20 GFLOP/s) takes 100 ms a tile, far longer than this host needs.
    upload(agent.stub, "cnn@1", small_cnn, gflop_per_inference=2.0)
    t0 = time.perf_counter()
    resp = agent.stub.Infer(infer_request("cnn@1", small_cnn), timeout=30)
    wall_ms = (time.perf_counter() - t0) * 1e3
    assert resp.emulated_ms == pytest.approx(2.0 / profile.compute_gflops * 1e3)
    assert resp.real_ms < resp.emulated_ms
    assert wall_ms >= resp.emulated_ms  # the slower node's time was slept, not just reported
    expected_wh = (profile.active_power_w - profile.idle_power_w) / profile.slots * resp.emulated_ms / 3.6e6
    assert resp.energy_wh == pytest.approx(expected_wh)
    # Replay (simulated clock): same emulated figure, no sleeping.
    t0 = time.perf_counter()
    sim = agent.stub.Infer(infer_request("cnn@1", small_cnn, simulated_clock=True), timeout=30)
    assert sim.emulated_ms == pytest.approx(resp.emulated_ms)
    status = agent.stub.GetStatus(node_agent_pb2.GetStatusRequest(), timeout=5)
    assert status.energy_used_wh == pytest.approx(2 * expected_wh)
    assert status.inferences_total == 2 and status.profile == "cubesat" and status.slots_total == 1


def test_infer_stream_answers_every_tile_in_order(start_agent, small_cnn) -> None:
    agent: RunningAgent = start_agent()
    upload(agent.stub, "cnn@1", small_cnn)
    tiles = [small_cnn.tile(seed=s) for s in range(5)]
    requests = [infer_request("cnn@1", small_cnn, t, request_id=f"t{i}") for i, t in enumerate(tiles)]
    responses = list(agent.stub.InferStream(iter(requests), timeout=30))
    assert [r.request_id for r in responses] == [f"t{i}" for i in range(5)]
    for t, r in zip(tiles, responses, strict=True):
        np.testing.assert_allclose(serde.tensor_to_array(r.outputs[0], "o", 1 << 20), reference(small_cnn, t),
                                   atol=LOGIT_ATOL)


def _poll_status(agent: RunningAgent, pred, timeout_s: float = 20.0) -> fleet_pb2.NodeStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        s = agent.stub.GetStatus(node_agent_pb2.GetStatusRequest(), timeout=5)
        if pred(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.01)


def test_slots_bound_concurrency_and_the_queue_is_reported(start_agent, small_cnn) -> None:
    agent: RunningAgent = start_agent(profile="cubesat")  # one slot
    upload(agent.stub, "cnn@1", small_cnn, gflop_per_inference=10.0)  # 500 ms a tile on the CubeSat
    futures = [agent.stub.Infer.future(infer_request("cnn@1", small_cnn), timeout=30) for _ in range(3)]
    seen = _poll_status(agent, lambda s: s.queue_length == 2)
    assert seen.queue_length == 2 and seen.slots_in_use == 1
    assert all(f.result().outputs[0].name == "logits" for f in futures)
    assert _poll_status(agent, lambda s: s.slots_in_use == 0).queue_length == 0


def test_results_wait_while_the_link_is_down(start_agent, small_cnn) -> None:
    agent: RunningAgent = start_agent()
    upload(agent.stub, "cnn@1", small_cnn)
    status = agent.stub.SetLinkState(fleet_pb2.SetLink(up=False), timeout=5)
    assert not status.link_up
    with pytest.raises(grpc.RpcError) as err:
        agent.stub.Infer(infer_request("cnn@1", small_cnn), timeout=1.0)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    pending = agent.stub.Infer.future(infer_request("cnn@1", small_cnn), timeout=30)
    _poll_status(agent, lambda s: s.inferences_total >= 2)
    assert not pending.done()  # computed, but held for the link
    agent.stub.SetLinkState(fleet_pb2.SetLink(up=True), timeout=5)
    assert pending.result().outputs[0].name == "logits"


def test_models_survive_a_restart(start_agent, small_cnn, tmp_path) -> None:
    first: RunningAgent = start_agent(models_dir=tmp_path / "store")
    upload(first.stub, "cnn@1", small_cnn)
    other = build_cnn(channels=(4,), seed=3)
    upload(first.stub, "other@2", other)
    first.stop()
    # Tamper with one stored file: the restarted agent refuses it and keeps the other.
    stored = tmp_path / "store" / "other@2" / "model.onnx"
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    stored.write_bytes(bytes(raw))
    second: RunningAgent = start_agent(models_dir=tmp_path / "store")
    assert [m.model_id for m in second.stub.ListModels(node_agent_pb2.ListModelsRequest(), timeout=5).models] == [
        "cnn@1"
    ]
    assert any("other@2" in r and "sha256" in r for r in second.deps.agent.refused_at_start)
    # The count made at upload was stored with the model, so the restart reports it without recounting.
    meta = json.loads((tmp_path / "store" / "cnn@1" / "meta.json").read_text())
    assert meta["counted_gflop"] == pytest.approx(small_cnn.gflop, rel=GFLOP_RTOL)
    assert second.deps.agent.model("cnn@1").gflop_per_inference == meta["counted_gflop"]
    resp = second.stub.Infer(infer_request("cnn@1", small_cnn), timeout=30)
    assert resp.outputs[0].name == "logits"


def test_load_by_path_and_unload(start_agent, small_cnn, tmp_path) -> None:
    agent: RunningAgent = start_agent()
    path = tmp_path / "cnn.onnx"
    path.write_bytes(small_cnn.data)
    info = agent.stub.LoadModel(iter([node_agent_pb2.LoadModelChunk(model_id="cnn@1", path=str(path))]), timeout=30)
    assert info.sha256 == small_cnn.sha256
    # Same bytes again: idempotent.
    assert upload(agent.stub, "cnn@1", small_cnn).sha256 == small_cnn.sha256
    agent.stub.UnloadModel(node_agent_pb2.UnloadModelRequest(model_id="cnn@1", delete_from_store=True), timeout=5)
    assert not agent.stub.ListModels(node_agent_pb2.ListModelsRequest(), timeout=5).models
    assert not (agent.config.models_dir / "cnn@1").exists()


def test_concurrent_clients_get_their_own_answers(start_agent, small_cnn) -> None:
    agent: RunningAgent = start_agent(profile="jetson-orin")
    upload(agent.stub, "cnn@1", small_cnn)
    tiles = [small_cnn.tile(seed=100 + i) for i in range(8)]
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        r = agent.stub.Infer(infer_request("cnn@1", small_cnn, tiles[i]), timeout=30)
        results[i] = serde.tensor_to_array(r.outputs[0], "o", 1 << 20)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, t in enumerate(tiles):
        np.testing.assert_allclose(results[i], reference(small_cnn, t), atol=LOGIT_ATOL)


def test_a_caller_that_gives_up_frees_its_slot(start_agent, small_cnn) -> None:
    agent: RunningAgent = start_agent(profile="cubesat")
    upload(agent.stub, "cnn@1", small_cnn, gflop_per_inference=72_000.0)  # one hour a tile on the CubeSat
    with pytest.raises(grpc.RpcError) as err:
        agent.stub.Infer(infer_request("cnn@1", small_cnn), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Without the cancellation the slot would stay asleep for the rest of the emulated hour.
    assert _poll_status(agent, lambda s: s.slots_in_use == 0 and s.inferences_total == 1).slots_in_use == 0
    resp = agent.stub.Infer(infer_request("cnn@1", small_cnn, simulated_clock=True), timeout=30)
    assert resp.emulated_ms == pytest.approx(3.6e6)
