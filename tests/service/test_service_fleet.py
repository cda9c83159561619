"""Fleet protocol and dispatch: agents register, receive work when the contact plan allows, report results;
a silent node is marked lost and its work re-planned. Simulated clock, so contact windows come on demand."""

from __future__ import annotations

import time
from datetime import timedelta

import grpc
import pytest
from service_harness import CLOCK_START, TERMINAL, ProtocolAgent, ServerFactory, details, submit, wait_for_state

from scheduler.clock import SimClock
from scheduler.servicer import BackgroundServer
from skyinfer.v1 import fleet_pb2, scheduler_pb2_grpc
from skyinfer.v1 import scheduler_pb2 as pb

COMPUTE_NODES = ("SKYSAT-C1", "SKYSAT-C2", "SKYSAT-C3")


def _server(make_server: ServerFactory) -> tuple[BackgroundServer, SimClock]:
    clock = SimClock(CLOCK_START)
    return make_server(clock=clock, heartbeat_interval_s=0.1, lost_after_s=0.6), clock


@pytest.mark.parametrize(("node", "code", "message"), [
    ("SPUTNIK", grpc.StatusCode.INVALID_ARGUMENT, "is not a satellite of the scenario"),
    ("SKYSAT-C4", grpc.StatusCode.INVALID_ARGUMENT, "has no node profile"),
    ("", grpc.StatusCode.INVALID_ARGUMENT, "register.node_id: required"),
])
def test_register_refuses_unknown_nodes(make_server: ServerFactory, node: str, code: grpc.StatusCode,
                                        message: str) -> None:
    server, _ = _server(make_server)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        agent = ProtocolAgent(ch, node)
        with pytest.raises(grpc.RpcError) as err:
            agent.next(kind="registered")
        assert err.value.code() == code and message in details(err.value)
        agent.close()


def test_register_with_the_wrong_profile_is_refused(make_server: ServerFactory) -> None:
    server, _ = _server(make_server)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        agent = ProtocolAgent(ch, "SKYSAT-C1", profile="cubesat")
        with pytest.raises(grpc.RpcError) as err:
            agent.next()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "register.profile" in details(err.value)
        agent.close()


def _ready_time_s(stub: scheduler_pb2_grpc.SchedulerStub, job_id: str) -> float:
    plan = stub.GetPlan(pb.GetPlanRequest(), timeout=5)
    (pj,) = [p for p in plan.jobs if p.job_id == job_id]
    hops = [*pj.input_route, *pj.model_route]
    return max(h.end.ToSeconds() for h in hops)


def test_work_is_dispatched_when_the_input_arrives_and_results_are_stored(make_server: ServerFactory) -> None:
    server, clock = _server(make_server)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        agents = {n: ProtocolAgent(ch, n, profile="jetson-orin").start_heartbeats() for n in COMPUTE_NODES}
        for agent in agents.values():
            reg = agent.next(kind="registered").registered
            assert reg.node_id == agent.node_id and reg.heartbeat_interval_s == pytest.approx(0.1)
        job_id = submit(stub, output_bytes=500).job.job_id
        scheduled = wait_for_state(stub, job_id, {pb.JOB_STATE_SCHEDULED})
        node = scheduled.node
        ready_s = _ready_time_s(stub, job_id)
        assert ready_s > clock.now().timestamp(), "the input is still on the ground: nothing may be sent yet"
        assert stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5).state == pb.JOB_STATE_SCHEDULED
        # Time reaches the end of the input's uplink: the work goes to the planned node, and only there.
        clock.advance_to(CLOCK_START + timedelta(seconds=ready_s - CLOCK_START.timestamp() + 1.0))
        work = agents[node].next(kind="work").work
        assert (work.job_id, work.model_id, work.tiles, work.simulated_clock) == (job_id, "tiny@1", 4, True)
        dispatched = wait_for_state(stub, job_id, {pb.JOB_STATE_DISPATCHED})
        assert dispatched.node == node
        result = fleet_pb2.WorkResult(work_id=work.work_id, job_id=job_id, node_id=node,
                                      status=fleet_pb2.WORK_STATUS_OK, output_bytes=500, tiles_done=4,
                                      emulated_ms=20.0, energy_wh=1e-4)
        agents[node].send_result(result)
        assert agents[node].next(kind="ack").ack.work_id == work.work_id
        done = wait_for_state(stub, job_id, TERMINAL)
        assert done.to_state == pb.JOB_STATE_SUCCEEDED and node in done.reason
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
        assert job.result.output_bytes == 500 and "tiles_done=4" in job.result.detail
        # A re-sent result (agent restarted before it saw the ack) is acknowledged, not applied twice.
        agents[node].send_result(result)
        assert agents[node].next(kind="ack").ack.work_id == work.work_id
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
        assert [t.to_state for t in job.transitions].count(pb.JOB_STATE_SUCCEEDED) == 1
        for agent in agents.values():
            agent.close()


def test_failed_work_is_recorded(make_server: ServerFactory) -> None:
    server, clock = _server(make_server)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        agents = {n: ProtocolAgent(ch, n).start_heartbeats() for n in COMPUTE_NODES}
        job_id = submit(stub).job.job_id
        node = wait_for_state(stub, job_id, {pb.JOB_STATE_SCHEDULED}).node
        clock.advance_to(CLOCK_START + timedelta(seconds=_ready_time_s(stub, job_id) - CLOCK_START.timestamp() + 1))
        work = agents[node].next(kind="work").work
        agents[node].send_result(fleet_pb2.WorkResult(work_id=work.work_id, job_id=job_id, node_id=node,
                                                      status=fleet_pb2.WORK_STATUS_FAILED,
                                                      error="inputs: shape mismatch"))
        done = wait_for_state(stub, job_id, TERMINAL)
        assert done.to_state == pb.JOB_STATE_FAILED and "inputs: shape mismatch" in done.reason
        for agent in agents.values():
            agent.close()


def test_lost_node_work_is_replanned_elsewhere(make_server: ServerFactory) -> None:
    server, clock = _server(make_server)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        agents = {n: ProtocolAgent(ch, n).start_heartbeats() for n in COMPUTE_NODES}
        job_id = submit(stub).job.job_id
        node = wait_for_state(stub, job_id, {pb.JOB_STATE_SCHEDULED}).node
        clock.advance_to(CLOCK_START + timedelta(seconds=_ready_time_s(stub, job_id) - CLOCK_START.timestamp() + 1))
        agents[node].next(kind="work")
        wait_for_state(stub, job_id, {pb.JOB_STATE_DISPATCHED})
        agents[node].close()  # the agent dies: no more heartbeats
        # The loop notices on its next tick of (simulated) time.
        for _ in range(40):
            clock.advance_by(1.0)
            job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
            if any("node-lost" in t.reason for t in job.transitions):
                break
            time.sleep(0.1)
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
        lost = [t for t in job.transitions if "node-lost" in t.reason]
        assert lost and lost[0].to_state == pb.JOB_STATE_PENDING and node in lost[0].reason
        # Re-planned without the lost node (or expired if no other node can make it in time).
        after = [t for t in job.transitions if t.seq > lost[0].seq]
        if not after:
            after = [wait_for_state(stub, job_id, {pb.JOB_STATE_SCHEDULED, pb.JOB_STATE_EXPIRED})]
        assert after[0].to_state in (pb.JOB_STATE_SCHEDULED, pb.JOB_STATE_EXPIRED)
        if after[0].to_state == pb.JOB_STATE_SCHEDULED:
            assert after[0].node != node
        for agent in agents.values():
            agent.close()


def test_cancelling_dispatched_work_tells_the_agent(make_server: ServerFactory) -> None:
    server, clock = _server(make_server)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        agents = {n: ProtocolAgent(ch, n).start_heartbeats() for n in COMPUTE_NODES}
        job_id = submit(stub).job.job_id
        node = wait_for_state(stub, job_id, {pb.JOB_STATE_SCHEDULED}).node
        clock.advance_to(CLOCK_START + timedelta(seconds=_ready_time_s(stub, job_id) - CLOCK_START.timestamp() + 1))
        work = agents[node].next(kind="work").work
        wait_for_state(stub, job_id, {pb.JOB_STATE_DISPATCHED})
        stub.CancelJob(pb.CancelJobRequest(job_id=job_id, reason="no longer needed"), timeout=5)
        assert agents[node].next(kind="cancel").cancel.work_id == work.work_id
        # The agent's late report of the cancelled work is acknowledged and changes nothing.
        agents[node].send_result(fleet_pb2.WorkResult(work_id=work.work_id, job_id=job_id, node_id=node,
                                                      status=fleet_pb2.WORK_STATUS_CANCELLED))
        assert agents[node].next(kind="ack").ack.work_id == work.work_id
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
        assert job.state == pb.JOB_STATE_CANCELLED and job.reason == "no longer needed"
        for agent in agents.values():
            agent.close()


def test_a_lost_node_stream_is_ended_and_the_agent_can_register_again(make_server: ServerFactory) -> None:
    server, clock = _server(make_server)
    assert server.app is not None and server.app.fleet is not None
    fleet = server.app.fleet
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        silent = ProtocolAgent(ch, "SKYSAT-C1")  # registers, then never heartbeats (a cut link)
        silent.next(kind="registered")
        deadline = time.monotonic() + 20
        while "SKYSAT-C1" not in fleet.lost():
            assert time.monotonic() < deadline, "the silent node was never marked lost"
            clock.advance_by(1.0)  # wakes the loop, which checks heartbeats
            time.sleep(0.1)
        # Its stream is ended, telling the agent to come back ...
        with pytest.raises(grpc.RpcError) as err:
            silent.next(timeout_s=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "marked lost" in details(err.value)
        silent.close()
        # ... and when it does, it is a connected node again.
        back = ProtocolAgent(ch, "SKYSAT-C1").start_heartbeats()
        back.next(kind="registered")
        assert "SKYSAT-C1" in fleet.connected() and "SKYSAT-C1" not in fleet.lost()
        back.close()
