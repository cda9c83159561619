"""End to end with the real node agents (node_agent.FleetClient running an ONNX model): a submitted job is
planned, dispatched when its input reaches the node, run by the agent, and its result stored."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import onnx
import pytest
from onnx import TensorProto, helper
from service_harness import CLOCK_START, TERMINAL, ServerFactory, submit, wait_for_state

from node_agent.config import AgentConfig
from node_agent.fleet_client import FleetClient
from node_agent.service import AgentDeps
from scheduler.clock import SimClock
from scheduler.types import BUILTIN_PROFILES
from skyinfer.v1 import scheduler_pb2 as pb
from skyinfer.v1 import scheduler_pb2_grpc

COMPUTE_NODES = ("SKYSAT-C1", "SKYSAT-C2", "SKYSAT-C3")


def _tiny_model() -> bytes:
    """A one-node ONNX model (y = relu(x), x: 1x4 float) standing for tiny@1."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[tuple[AgentConfig, FleetClient]]]:
    started: list[tuple[AgentConfig, FleetClient]] = []
    yield started
    for _, client in started:
        client.stop()


def test_real_agents_run_dispatched_work(make_server: ServerFactory, tmp_path: Path,
                                         agents: list[tuple[AgentConfig, FleetClient]]) -> None:
    clock = SimClock(CLOCK_START)
    server = make_server(clock=clock, heartbeat_interval_s=0.2, lost_after_s=5.0)
    data = _tiny_model()
    for node in COMPUTE_NODES:
        config = AgentConfig(node_id=node, profile=BUILTIN_PROFILES["jetson-orin"],
                             models_dir=tmp_path / node / "models", scheduler_address=f"127.0.0.1:{server.port}",
                             intra_op_threads=1, heartbeat_interval_s=0.2, reconnect_min_s=0.05,
                             reconnect_max_s=0.5, simulated_clock=True)
        deps = AgentDeps.create(config)
        deps.agent.load_store()
        deps.agent.load_model("tiny@1", hashlib.sha256(data).hexdigest(), len(data), [data])
        client = FleetClient(config, deps.agent, deps.spool, "127.0.0.1:0")
        client.start()
        agents.append((config, client))
    assert server.app is not None and server.app.fleet is not None
    deadline = time.monotonic() + 30
    while server.app.fleet.connected() != set(COMPUTE_NODES):
        assert time.monotonic() < deadline, f"agents did not register: {server.app.fleet.connected()}"
        time.sleep(0.05)

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        job_id = submit(stub, tiles=5, output_bytes=16).job.job_id
        node = wait_for_state(stub, job_id, {pb.JOB_STATE_SCHEDULED}).node
        plan = stub.GetPlan(pb.GetPlanRequest(), timeout=5)
        (planned,) = [p for p in plan.jobs if p.job_id == job_id]
        ready_s = max(h.end.ToSeconds() for h in (*planned.input_route, *planned.model_route))
        clock.advance_to(CLOCK_START + timedelta(seconds=ready_s - CLOCK_START.timestamp() + 1.0))
        done = wait_for_state(stub, job_id, TERMINAL, timeout_s=30)
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
    assert done.to_state == pb.JOB_STATE_SUCCEEDED, job.reason
    assert done.node == node
    assert "tiles_done=5" in job.result.detail
    assert job.result.output_bytes == 5 * 4 * 4  # five tiles of a 1x4 float32 output
    states = [t.to_state for t in job.transitions]
    # RUNNING comes from the agent's WorkStarted, which it sends on the same stream before the result.
    assert states == [pb.JOB_STATE_PENDING, pb.JOB_STATE_SCHEDULED, pb.JOB_STATE_DISPATCHED, pb.JOB_STATE_RUNNING,
                      pb.JOB_STATE_SUCCEEDED]
    running = job.transitions[3]
    assert running.node == node and "started the work" in running.reason
