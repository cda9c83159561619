"""Real agents against the real scheduler service (scheduler.servicer.BackgroundServer, simulated clock):
register, take dispatched work, run it with onnxruntime, report; a silent agent becomes a lost node."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from onnx_builders import BuiltModel, build_cnn

from node_agent.config import AgentConfig
from node_agent.fleet_client import FleetClient
from node_agent.service import AgentDeps
from scheduler.types import BUILTIN_PROFILES
from skyinfer.v1 import scheduler_pb2 as pb
from skyinfer.v1 import scheduler_pb2_grpc

SCENARIO = Path(__file__).parent / "data" / "fleet.yaml"
NODES = ("SKYSAT-C1", "SKYSAT-C2", "SKYSAT-C3")
CLOCK_START = datetime(2023, 4, 20, 0, 1, tzinfo=UTC)
WAIT_S = 30.0
HEARTBEAT_S = 0.1
LOST_AFTER_S = 0.6


@pytest.fixture(scope="module")
def problem():
    from scheduler.service import problem_loader
    from skyinfer.scenario import load_scenario

    return problem_loader(load_scenario(SCENARIO))()


@pytest.fixture
def scheduler(tmp_path: Path, problem) -> Iterator[tuple[object, object]]:
    from scheduler.clock import SimClock
    from scheduler.loop import LoopConfig
    from scheduler.servicer import BackgroundServer, ServerConfig, ServerDeps

    clock = SimClock(CLOCK_START)
    config = ServerConfig(db_path=str(tmp_path / "jobs.db"), listen="127.0.0.1:0",
                          loop=LoopConfig(debounce_s=0.05, time_limit_s=2.0),
                          heartbeat_interval_s=HEARTBEAT_S, lost_after_s=LOST_AFTER_S)
    server = BackgroundServer(config, ServerDeps(load_problem=lambda: problem, clock=clock))
    server.start(wait_ready_s=60.0)
    yield server, clock
    server.stop()


def _agent(tmp_path: Path, node: str, port: int, model: BuiltModel) -> tuple[FleetClient, AgentDeps]:
    config = AgentConfig(node_id=node, profile=BUILTIN_PROFILES["jetson-orin"], models_dir=tmp_path / node,
                         scheduler_address=f"127.0.0.1:{port}", intra_op_threads=1, reconnect_min_s=0.05,
                         reconnect_max_s=0.5)
    deps = AgentDeps.create(config)
    deps.agent.load_model("cnn@1", model.sha256, len(model.data), [model.data])
    client = FleetClient(config, deps.agent, deps.spool, "127.0.0.1:1")
    client.start()
    return client, deps


def _state(stub: scheduler_pb2_grpc.SchedulerStub, job_id: str, states: set[int], clock=None,
           timeout_s: float = WAIT_S) -> pb.Job:
    deadline = time.monotonic() + timeout_s
    while True:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
        if job.state in states or time.monotonic() > deadline:
            return job
        if clock is not None:
            clock.advance_by(1.0)
        time.sleep(0.05)


def _ready_s(stub: scheduler_pb2_grpc.SchedulerStub, job_id: str) -> float:
    plan = stub.GetPlan(pb.GetPlanRequest(), timeout=5)
    (pj,) = [p for p in plan.jobs if p.job_id == job_id]
    return max(h.end.ToSeconds() for h in [*pj.input_route, *pj.model_route])


@pytest.mark.slow
def test_real_agents_run_dispatched_work_and_a_silent_one_is_lost(scheduler, tmp_path: Path) -> None:
    server, clock = scheduler
    model = build_cnn()
    agents = {n: _agent(tmp_path, n, server.port, model) for n in NODES}
    try:
        assert all(client.registered.wait(WAIT_S) for client, _ in agents.values())
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = scheduler_pb2_grpc.SchedulerStub(ch)
            job = pb.JobSpec(model_id="cnn@1", deadline_after=Duration(seconds=7200), input_bytes=10_000,
                             output_bytes=64, tiles=4, priority=2)
            job_id = stub.SubmitJob(pb.SubmitJobRequest(job=job), timeout=10).job.job_id
            scheduled = _state(stub, job_id, {pb.JOB_STATE_SCHEDULED})
            assert scheduled.state == pb.JOB_STATE_SCHEDULED, scheduled
            node = scheduled.node
            clock.advance_to(CLOCK_START + timedelta(seconds=_ready_s(stub, job_id) - CLOCK_START.timestamp() + 1))
            done = _state(stub, job_id, {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED}, clock)
            assert done.state == pb.JOB_STATE_SUCCEEDED, done
            # The agent really ran 4 tiles: 4 x logits[1,4] float32 = 64 bytes of output.
            assert done.result.output_bytes == 64 and "tiles_done=4" in done.result.detail
            _wait(lambda: len(agents[node][1].spool) == 0)  # acknowledged, so dropped from the spool
            assert len(agents[node][1].spool) == 0
            assert agents[node][1].agent.status().inferences_total == 4

            # One agent goes silent: the scheduler marks its node lost.
            silent = NODES[0]
            agents[silent][0].stop()
            _wait(lambda: silent in server.app.fleet.lost(), tick=lambda: clock.advance_by(1.0))
            assert silent in server.app.fleet.lost()
            assert server.app.fleet.connected() == set(NODES) - {silent}
    finally:
        for client, _ in agents.values():
            client.stop()


def _wait(pred, timeout_s: float = WAIT_S, tick=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred() and time.monotonic() < deadline:
        if tick is not None:
            tick()
        time.sleep(0.05)


@pytest.mark.slow
def test_a_refused_registration_is_logged_as_an_error(scheduler, tmp_path: Path, caplog) -> None:
    server, _ = scheduler
    config = AgentConfig(node_id="SKYSAT-C1", profile=BUILTIN_PROFILES["cubesat"], models_dir=tmp_path / "m",
                         scheduler_address=f"127.0.0.1:{server.port}", reconnect_min_s=0.05, reconnect_max_s=0.2)
    deps = AgentDeps.create(config)
    client = FleetClient(config, deps.agent, deps.spool, "127.0.0.1:1")
    client.start()
    try:
        _wait(lambda: any("register.profile" in r.getMessage() for r in caplog.records))
        refused = [r for r in caplog.records if "register.profile" in r.getMessage()]
        assert refused and refused[0].levelname == "ERROR" and "INVALID_ARGUMENT" in refused[0].getMessage()
        assert not client.registered.is_set()
    finally:
        client.stop()
