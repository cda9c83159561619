"""The Scheduler API over a real server and real stubs: submit, get, list, cancel, watch, plan, errors."""

from __future__ import annotations

import math
import threading
from datetime import timedelta
from typing import Any, cast

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_harness import (
    CLOCK_START,
    SCENARIO,
    TERMINAL,
    ServerFactory,
    details,
    events,
    job_spec,
    submit,
    wait_for_state,
)

from scheduler.loop import LoopConfig
from scheduler.service import problem_loader
from scheduler.servicer import MAX_RECEIVE_MESSAGE_BYTES, BackgroundServer
from scheduler.types import Problem
from skyinfer.scenario import load_scenario
from skyinfer.v1 import scheduler_pb2 as pb
from skyinfer.v1 import scheduler_pb2_grpc


def _ts(dt: Any) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)
    return ts


def test_submit_is_acknowledged_then_planned(stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    reply = submit(stub)
    assert reply.created
    job = reply.job
    assert job.state == pb.JOB_STATE_PENDING
    assert job.spec.model_id == "tiny@1"
    # The relative deadline became absolute, counted from the submit time.
    assert job.spec.deadline.ToSeconds() - job.submit_time.ToSeconds() == pytest.approx(7200, abs=1e-3)
    ev = wait_for_state(stub, job.job_id, {pb.JOB_STATE_SCHEDULED})
    got = stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=5)
    assert [t.to_state for t in got.transitions][:2] == [pb.JOB_STATE_PENDING, pb.JOB_STATE_SCHEDULED]
    assert got.transitions[1].seq == ev.seq
    assert got.node == ev.node and got.node.startswith("SKYSAT-")
    # Planned times lie inside the job's window.
    assert job.submit_time.ToSeconds() <= got.planned_start.ToSeconds() <= got.planned_end.ToSeconds()
    assert got.planned_arrival.ToSeconds() <= got.spec.deadline.ToSeconds()
    plan = stub.GetPlan(pb.GetPlanRequest(), timeout=5)
    planned = {pj.job_id: pj for pj in plan.jobs}
    assert planned[job.job_id].status == "scheduled" and planned[job.job_id].node == got.node
    assert planned[job.job_id].input_route, "an uplinked input needs a route to the node"


def test_retried_submit_returns_the_same_job(stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    first = submit(stub, request_id="client-42")
    again = submit(stub, request_id="client-42")
    assert first.created and not again.created
    assert again.job.job_id == first.job.job_id
    listed = stub.ListJobs(pb.ListJobsRequest(page_size=100), timeout=5)
    assert [j.job_id for j in listed.jobs].count(first.job.job_id) == 1
    assert len(listed.jobs) == 1
    # The same key for a different job is a client bug, not a retry.
    with pytest.raises(grpc.RpcError) as err:
        submit(stub, request_id="client-42", priority=9)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "request_id" in details(err.value)


def test_concurrent_retries_create_one_job(stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        reply = submit(stub, request_id="same-key")
        with lock:
            ids.append(reply.job.job_id)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 16 and len(set(ids)) == 1


BAD_SUBMITS: list[tuple[str, dict[str, Any], str]] = [
    ("no model", {"model_id": ""}, "model_id: required"),
    ("unknown model", {"model_id": "nope@1"}, "model_id: unknown model 'nope@1'"),
    ("malformed model", {"model_id": "no-version"}, "model_id: expected name@version"),
    ("deadline in the past", {"deadline": _ts(CLOCK_START - timedelta(hours=1))}, "deadline: before submit time"),
    ("negative relative deadline", {"deadline_after": Duration(seconds=-60)}, "deadline_after: must be positive"),
    ("deadline far ahead", {"deadline_after": Duration(seconds=400 * 86400)}, "deadline_after: more than a year"),
    ("deadline beyond the month", {"deadline_after": Duration(seconds=40 * 86400)}, "deadline: more than 30"),
    ("priority too high", {"priority": 1001}, "priority: must be an integer in [1, 1000]"),
    ("priority negative", {"priority": -3}, "priority: must be in [1, 1000]"),
    ("tiles negative", {"tiles": -1}, "tiles: must be in"),
    ("tiles too many", {"tiles": 20_000_000}, "tiles: must be an integer"),
    ("input bytes negative", {"input_bytes": -5}, "input_bytes: must be an integer"),
    ("output bytes negative", {"output_bytes": -5}, "output_bytes: must be an integer"),
    ("latitude", {"capture": pb.CaptureInput(latitude_deg=91, longitude_deg=0)}, "capture.latitude_deg"),
    ("longitude", {"capture": pb.CaptureInput(latitude_deg=10, longitude_deg=181)}, "capture.longitude_deg"),
    ("latitude nan", {"capture": pb.CaptureInput(latitude_deg=math.nan, longitude_deg=0)},
     "capture.latitude_deg: must be a finite number"),
    ("elevation", {"capture": pb.CaptureInput(latitude_deg=10, longitude_deg=10, min_elevation_deg=95)},
     "capture.min_elevation_deg"),
    ("unknown uplink station", {"uplink": pb.UplinkInput(station="Atlantis")}, "uplink.station: unknown station"),
    ("unknown satellite", {"onboard": pb.OnboardInput(satellite="SPUTNIK")}, "onboard.satellite: unknown"),
    ("empty satellite", {"onboard": pb.OnboardInput(satellite="")}, "onboard.satellite: must not be empty"),
    ("unknown destination", {"destination": "Atlantis"}, "destination: unknown station"),
    ("input location too long", {"input_location": "x" * 5000}, "input_location: at most 4096"),
]


@pytest.mark.parametrize(("fields", "message"), [c[1:] for c in BAD_SUBMITS], ids=[c[0] for c in BAD_SUBMITS])
def test_bad_submit_names_the_field(stub: scheduler_pb2_grpc.SchedulerStub, fields: dict[str, Any],
                                    message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        submit(stub, **fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in details(err.value)
    assert stub.ListJobs(pb.ListJobsRequest(), timeout=5).jobs == [], "a rejected job must not be stored"


def test_bad_requests_of_the_other_calls(stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    cases: list[tuple[Any, Any, grpc.StatusCode, str]] = [
        (stub.SubmitJob, pb.SubmitJobRequest(), grpc.StatusCode.INVALID_ARGUMENT, "job: required"),
        (stub.SubmitJob, pb.SubmitJobRequest(job=job_spec(), request_id="r" * 200),
         grpc.StatusCode.INVALID_ARGUMENT, "request_id: at most 128"),
        (stub.SubmitJob, pb.SubmitJobRequest(job=pb.JobSpec(model_id="tiny@1")), grpc.StatusCode.INVALID_ARGUMENT,
         "deadline: required"),
        (stub.GetJob, pb.GetJobRequest(), grpc.StatusCode.INVALID_ARGUMENT, "job_id: must not be empty"),
        (stub.GetJob, pb.GetJobRequest(job_id="job-nope"), grpc.StatusCode.NOT_FOUND, "job_id: no job"),
        (stub.CancelJob, pb.CancelJobRequest(job_id="job-nope"), grpc.StatusCode.NOT_FOUND, "job_id: no job"),
        (stub.CancelJob, pb.CancelJobRequest(), grpc.StatusCode.INVALID_ARGUMENT, "job_id: must not be empty"),
        (stub.ListJobs, pb.ListJobsRequest(page_size=-1), grpc.StatusCode.INVALID_ARGUMENT, "page_size: must be"),
        (stub.ListJobs, pb.ListJobsRequest(page_size=5000), grpc.StatusCode.INVALID_ARGUMENT, "page_size: at most"),
        (stub.ListJobs, pb.ListJobsRequest(page_token="garbage!"), grpc.StatusCode.INVALID_ARGUMENT,
         "page_token: not a token"),
        (stub.ListJobs, pb.ListJobsRequest(states=[cast(pb.JobState, 99)]), grpc.StatusCode.INVALID_ARGUMENT,
         "states: unknown job state 99"),
    ]
    for method, request, code, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            method(request, timeout=5)
        assert (err.value.code(), message in details(err.value)) == (code, True), (request, details(err.value))
    with pytest.raises(grpc.RpcError) as err:
        events(stub, after_seq=-1, count=1)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "after_seq" in details(err.value)


def test_oversized_request_is_refused(stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    huge = job_spec(input_location="x" * (MAX_RECEIVE_MESSAGE_BYTES + 1))
    with pytest.raises(grpc.RpcError) as err:
        stub.SubmitJob(pb.SubmitJobRequest(job=huge), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_list_pages_and_filters(stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    tiny = [submit(stub).job.job_id for _ in range(23)]
    big = [submit(stub, model_id="cloudmask@1").job.job_id for _ in range(4)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = stub.ListJobs(pb.ListJobsRequest(page_size=10, page_token=token), timeout=5)
        seen += [j.job_id for j in reply.jobs]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert seen == tiny + big and pages == 3
    only_big = stub.ListJobs(pb.ListJobsRequest(model_id="cloudmask@1"), timeout=5)
    assert [j.job_id for j in only_big.jobs] == big
    first = stub.ListJobs(pb.ListJobsRequest(page_size=2, model_id="cloudmask@1"), timeout=5)
    with pytest.raises(grpc.RpcError) as err:  # a token is bound to its query
        stub.ListJobs(pb.ListJobsRequest(page_size=2, page_token=first.next_page_token), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "different filter" in details(err.value)
    stub.CancelJob(pb.CancelJobRequest(job_id=tiny[0]), timeout=5)
    cancelled = stub.ListJobs(pb.ListJobsRequest(states=[pb.JOB_STATE_CANCELLED]), timeout=5)
    assert [j.job_id for j in cancelled.jobs] == [tiny[0]]


def test_cancel(stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    job_id = submit(stub).job.job_id
    cancelled = stub.CancelJob(pb.CancelJobRequest(job_id=job_id, reason="operator changed their mind"), timeout=5)
    assert cancelled.state == pb.JOB_STATE_CANCELLED and cancelled.reason == "operator changed their mind"
    ev = wait_for_state(stub, job_id, {pb.JOB_STATE_CANCELLED})
    assert ev.reason == "operator changed their mind"
    with pytest.raises(grpc.RpcError) as err:
        stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already CANCELLED" in details(err.value)
    states = [t.to_state for t in stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5).transitions]
    assert states[-1] == pb.JOB_STATE_CANCELLED and states.count(pb.JOB_STATE_CANCELLED) == 1


def test_watch_resumes_from_cursor(stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    ids = [submit(stub).job.job_id for _ in range(5)]
    for job_id in ids[:2]:
        stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=5)
    history = events(stub, count=7, states=[pb.JOB_STATE_PENDING, pb.JOB_STATE_CANCELLED])
    seqs = [e.seq for e in history]
    assert seqs == sorted(seqs) and len(set(seqs)) == 7
    assert [e.job_id for e in history[:5]] == ids
    # A client that saw up to history[3] reconnects and continues exactly where it was.
    resumed = events(stub, after_seq=history[3].seq, count=3, states=[pb.JOB_STATE_PENDING, pb.JOB_STATE_CANCELLED])
    assert [e.seq for e in resumed] == seqs[4:]
    # Events that happen while nobody watches are delivered on resume too.
    last = history[-1].seq
    late = submit(stub).job.job_id
    (ev,) = events(stub, after_seq=last, count=1, job_ids=[late])
    assert ev.job_id == late and ev.to_state == pb.JOB_STATE_PENDING and ev.seq > last


def test_watch_older_than_memory_reads_the_store(make_server: ServerFactory) -> None:
    server = make_server(event_window=4)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        ids = [submit(stub).job.job_id for _ in range(12)]
        got = events(stub, count=12, states=[pb.JOB_STATE_PENDING])
        assert [e.job_id for e in got] == ids


def test_watch_from_now_and_client_deadline(stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    submit(stub)
    call = stub.WatchJobs(pb.WatchJobsRequest(from_now=True, states=[pb.JOB_STATE_PENDING]), timeout=1.0)
    with pytest.raises(grpc.RpcError) as err:
        list(call)  # no new job arrives: the stream ends at the client's deadline
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_job_that_cannot_meet_its_deadline_expires(stub: scheduler_pb2_grpc.SchedulerStub) -> None:
    # The first ground pass is ~11 minutes after the clock start: a 2-minute deadline cannot be met.
    job_id = submit(stub, deadline_after=Duration(seconds=120)).job.job_id
    ev = wait_for_state(stub, job_id, TERMINAL)
    assert ev.to_state == pb.JOB_STATE_EXPIRED
    assert ev.reason.split(":")[0] in {"no-contact", "deadline", "model-uplink"}, ev.reason


def test_health_is_not_serving_until_the_contact_plan_is_loaded(make_server: ServerFactory,
                                                                base_problem: Problem) -> None:
    gate = threading.Event()

    def slow_load() -> Problem:
        gate.wait(30)
        return base_problem

    server: BackgroundServer = make_server(load_problem=slow_load, wait_ready=False)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        for service in ("", "skyinfer.v1.Scheduler"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            submit(stub)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        gate.set()
        assert server.app is not None and server.app.ready.wait(30)
        status = health.Check(health_pb2.HealthCheckRequest(service="skyinfer.v1.Scheduler"), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert submit(stub).created


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"skyinfer.v1.Scheduler", "skyinfer.v1.Fleet", "grpc.health.v1.Health"} <= names


def test_planning_in_a_worker_process(make_server: ServerFactory) -> None:
    loader = problem_loader(load_scenario(SCENARIO))
    server = make_server(load_problem=loader,
                         loop=LoopConfig(debounce_s=0.05, min_interval_s=0.0, planner_process=True))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        job_id = submit(stub).job.job_id
        ev = wait_for_state(stub, job_id, {pb.JOB_STATE_SCHEDULED}, timeout_s=60)
        # The worker's own copy of the problem gives the same plan as planning in-process would.
        plan = stub.GetPlan(pb.GetPlanRequest(), timeout=5)
        assert [(p.job_id, p.node) for p in plan.jobs] == [(job_id, ev.node)]
