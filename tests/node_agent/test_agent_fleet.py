"""The agent's side of Fleet.Connect against a protocol harness standing in for the scheduler.

The harness is a real gRPC Fleet server that records what agents send and lets the test send scheduler
messages; the scheduler's own server is tested with its code. What is checked here is the agent's contract:
register, heartbeat, run Work, spool results until ResultAck, re-send after a restart, gate on the link.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from fleet_harness import WAIT_S, FleetHarness, Session
from onnx_builders import build_cnn

from node_agent import serde
from node_agent.config import AgentConfig
from node_agent.fleet_client import FleetClient
from node_agent.service import AgentDeps
from scheduler.types import BUILTIN_PROFILES
from skyinfer.v1 import fleet_pb2, fleet_pb2_grpc


@pytest.fixture
def harness() -> Iterator[tuple[FleetHarness, int]]:
    h = FleetHarness()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    fleet_pb2_grpc.add_FleetServicer_to_server(h, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield h, port
    server.stop(0).wait()


def _client(tmp_path: Path, port: int, token: str | None = None) -> tuple[FleetClient, AgentDeps]:
    config = AgentConfig(
        node_id="FLOCK 4Q-1", profile=BUILTIN_PROFILES["jetson-orin"], models_dir=tmp_path / "models",
        scheduler_address=f"127.0.0.1:{port}", intra_op_threads=1, heartbeat_interval_s=0.2,
        reconnect_min_s=0.05, reconnect_max_s=0.5, scheduler_token=token,
    )
    deps = AgentDeps.create(config)
    deps.agent.load_store()
    client = FleetClient(config, deps.agent, deps.spool, "127.0.0.1:50051")
    client.start()
    return client, deps


def test_register_work_result_ack_and_resend_after_restart(harness, tmp_path: Path) -> None:
    h, port = harness
    model = build_cnn()
    client, deps = _client(tmp_path, port)
    deps.agent.load_model("cnn@1", model.sha256, len(model.data), [model.data])
    s = h.sessions.get(timeout=WAIT_S)
    reg = s.next("register").register
    assert (reg.node_id, reg.profile, reg.agent_address) == ("FLOCK 4Q-1", "jetson-orin", "127.0.0.1:50051")
    s.send(registered=fleet_pb2.Registered(node_id=reg.node_id, heartbeat_interval_s=0.2))
    hb = s.next("heartbeat").heartbeat
    assert hb.status.models == ["cnn@1"] and hb.status.link_up

    tile = serde.array_to_tensor("x", model.tile())
    s.send(work=fleet_pb2.Work(work_id="w1", job_id="j1", model_id="cnn@1", inputs=[tile], tiles=3,
                               return_outputs=True))
    r = s.next("result").result
    assert (r.work_id, r.job_id, r.status, r.tiles_done) == ("w1", "j1", fleet_pb2.WORK_STATUS_OK, 3)
    assert r.emulated_ms == pytest.approx(3 * model.gflop / 2000.0 * 1e3)
    assert r.outputs[0].name == "logits" and r.output_bytes == 3 * 4 * 4
    # Bad work fails with a reason, and the stream carries on.
    s.send(work=fleet_pb2.Work(work_id="w2", job_id="j2", model_id="missing@1"))
    bad = s.next("result").result
    assert bad.status == fleet_pb2.WORK_STATUS_FAILED and bad.error.startswith("model_id: 'missing@1' is not loaded")
    s.send(ack=fleet_pb2.ResultAck(work_id="w2"))
    _wait(lambda: len(deps.spool) == 1)  # w1 not acknowledged yet

    client.stop()  # the agent goes away with w1 unacknowledged
    client2, _ = _client(tmp_path, port)
    try:
        s2 = h.sessions.get(timeout=WAIT_S)
        assert list(s2.next("register").register.pending_work_ids) == ["w1"]
        s2.send(registered=fleet_pb2.Registered())
        again = s2.next("result").result
        assert again.work_id == "w1" and again.tiles_done == 3
        # The same work dispatched again is not re-run: the stored result comes back.
        s2.send(work=fleet_pb2.Work(work_id="w1", job_id="j1", model_id="cnn@1", tiles=3))
        assert s2.next("result").result.finished_unix_s == again.finished_unix_s
        s2.send(ack=fleet_pb2.ResultAck(work_id="w1"))
        _wait(lambda: len(deps.spool) == 0)
        assert len(deps.spool) == 0
    finally:
        client2.stop()


def test_link_down_holds_results_until_it_comes_back(harness, tmp_path: Path) -> None:
    h, port = harness
    model = build_cnn(channels=(4,))
    client, deps = _client(tmp_path, port)
    try:
        deps.agent.load_model("cnn@1", model.sha256, len(model.data), [model.data])
        s = h.sessions.get(timeout=WAIT_S)
        s.next("register")
        s.send(registered=fleet_pb2.Registered())
        s.send(set_link=fleet_pb2.SetLink(up=False))
        s.send(work=fleet_pb2.Work(work_id="w9", job_id="j9", model_id="cnn@1", simulated_clock=True))
        _wait(lambda: len(deps.spool) == 1)
        hb = s.next("heartbeat").heartbeat
        assert not hb.status.link_up and hb.status.results_pending == 1
        assert all(m.WhichOneof("kind") != "result" for m in _drain(s))
        s.send(set_link=fleet_pb2.SetLink(up=True))
        assert s.next("result").result.work_id == "w9"
    finally:
        client.stop()


def test_cancel_before_the_start_time_gives_a_cancelled_result(harness, tmp_path: Path) -> None:
    h, port = harness
    model = build_cnn(channels=(4,))
    client, deps = _client(tmp_path, port)
    try:
        deps.agent.load_model("cnn@1", model.sha256, len(model.data), [model.data])
        s = h.sessions.get(timeout=WAIT_S)
        s.next("register")
        s.send(registered=fleet_pb2.Registered())
        s.send(work=fleet_pb2.Work(work_id="late", job_id="j", model_id="cnn@1", tiles=2,
                                   not_before_unix_s=time.time() + 3600))
        s.send(cancel=fleet_pb2.Cancel(work_id="late"))
        r = s.next("result").result
        assert (r.work_id, r.status, r.tiles_done) == ("late", fleet_pb2.WORK_STATUS_CANCELLED, 0)
        assert deps.agent.status().inferences_total == 0
    finally:
        client.stop()


def test_reconnects_when_the_scheduler_comes_up_late(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client, _ = _client(tmp_path, port, token="s3cret")  # nothing listens yet: the client backs off, retries
    try:
        time.sleep(0.3)
        h = FleetHarness()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        fleet_pb2_grpc.add_FleetServicer_to_server(h, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        try:
            s = h.sessions.get(timeout=WAIT_S)
            assert s.next("register").register.node_id == "FLOCK 4Q-1"
            assert s.metadata["authorization"] == "Bearer s3cret"
            s.send(registered=fleet_pb2.Registered())
            assert client.registered.wait(WAIT_S)
        finally:
            server.stop(0).wait()
    finally:
        client.stop()


def _drain(s: Session) -> list[fleet_pb2.AgentMessage]:
    out = []
    while True:
        try:
            out.append(s.from_agent.get_nowait())
        except queue.Empty:
            return out


def _wait(pred, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)
