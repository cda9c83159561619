"""Helpers shared by the service tests: request builders and waiting on job events through WatchJobs."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from scheduler.servicer import BackgroundServer
from skyinfer.v1 import fleet_pb2, fleet_pb2_grpc, scheduler_pb2_grpc
from skyinfer.v1 import scheduler_pb2 as pb

DATA_DIR = Path(__file__).parent / "data"
SCENARIO = DATA_DIR / "service.yaml"
EPOCH = datetime(2023, 4, 20, tzinfo=UTC)
# Test servers' clocks start one minute into the scenario (the first ground pass is ~12 minutes in).
CLOCK_START = EPOCH + timedelta(minutes=1)
ServerFactory = Callable[..., BackgroundServer]

TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED, pb.JOB_STATE_EXPIRED}


def job_spec(**fields: Any) -> pb.JobSpec:
    """A valid job (tiny model, 2 h deadline, uplinked from any station), with ``fields`` overriding."""
    spec = pb.JobSpec(model_id="tiny@1", deadline_after=Duration(seconds=7200), input_bytes=10_000,
                      output_bytes=1_000, tiles=4, priority=2)
    for key, value in fields.items():
        if isinstance(value, pb.CaptureInput | pb.UplinkInput | pb.OnboardInput | Duration | Timestamp):
            getattr(spec, key).CopyFrom(value)
        else:
            setattr(spec, key, value)
    return spec


def submit(stub: scheduler_pb2_grpc.SchedulerStub, request_id: str = "", **fields: Any) -> pb.SubmitJobResponse:
    return stub.SubmitJob(pb.SubmitJobRequest(job=job_spec(**fields), request_id=request_id), timeout=10)


def events(stub: scheduler_pb2_grpc.SchedulerStub, *, after_seq: int = 0, count: int,
           timeout_s: float = 10.0, **filters: Any) -> list[pb.JobEvent]:
    """The first ``count`` events after ``after_seq`` (fails the test when they do not come in time)."""
    out: list[pb.JobEvent] = []
    call = stub.WatchJobs(pb.WatchJobsRequest(after_seq=after_seq, **filters), timeout=timeout_s)
    try:
        for ev in call:
            out.append(ev)
            if len(out) == count:
                break
    finally:
        call.cancel()
    assert len(out) == count, f"stream ended after {len(out)} of {count} events"
    return out


def details(err: grpc.RpcError) -> str:
    """The status message of a failed call."""
    return str(err.details() or "")


def wait_for_state(stub: scheduler_pb2_grpc.SchedulerStub, job_id: str, states: Collection[Any],
                   timeout_s: float = 20.0) -> pb.JobEvent:
    """Block until ``job_id`` enters one of ``states`` (replays the job's history first)."""
    call = stub.WatchJobs(pb.WatchJobsRequest(after_seq=0, job_ids=[job_id]), timeout=timeout_s)
    try:
        for ev in call:
            if ev.to_state in states:
                return ev
    except grpc.RpcError as exc:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=5)
        raise AssertionError(f"job {job_id} never reached {states}; it is {pb.JobState.Name(job.state)} "
                             f"({job.reason}): {exc.code()}") from None
    finally:
        call.cancel()
    raise AssertionError("watch ended")


class ProtocolAgent:
    """A node agent speaking the Fleet protocol directly (register, heartbeat, results) for protocol tests.

    Replies from the scheduler are collected by a reader thread; :meth:`next` waits for the next one.
    """

    def __init__(self, channel: grpc.Channel, node_id: str, *, profile: str = "",
                 heartbeat_interval_s: float = 0.1) -> None:
        self.node_id = node_id
        self._out: queue.Queue[fleet_pb2.AgentMessage | None] = queue.Queue()
        self._in: queue.Queue[fleet_pb2.SchedulerMessage | grpc.RpcError] = queue.Queue()
        self._stop = threading.Event()
        self._heartbeat_interval_s = heartbeat_interval_s
        self._out.put(fleet_pb2.AgentMessage(register=fleet_pb2.Register(node_id=node_id, profile=profile)))
        self._call = fleet_pb2_grpc.FleetStub(channel).Connect(iter(self._out.get, None))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._beater = threading.Thread(target=self._beat, daemon=True)

    def _read(self) -> None:
        try:
            for msg in self._call:
                self._in.put(msg)
        except grpc.RpcError as exc:
            self._in.put(exc)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_interval_s):
            self._out.put(fleet_pb2.AgentMessage(heartbeat=fleet_pb2.Heartbeat(
                status=fleet_pb2.NodeStatus(node_id=self.node_id), sent_unix_s=time.time())))

    def next(self, timeout_s: float = 20.0, kind: str | None = None) -> fleet_pb2.SchedulerMessage:
        """The next message (of ``kind`` when given; others are skipped); raises the stream's RpcError."""
        deadline = time.monotonic() + timeout_s
        while True:
            item = self._in.get(timeout=max(0.001, deadline - time.monotonic()))
            if isinstance(item, grpc.RpcError):
                raise item
            if kind is None or item.WhichOneof("kind") == kind:
                return item

    def start_heartbeats(self) -> ProtocolAgent:
        self._beater.start()
        return self

    def send_result(self, result: fleet_pb2.WorkResult) -> None:
        self._out.put(fleet_pb2.AgentMessage(result=result))

    def close(self) -> None:
        """Stop heartbeating and end the stream (as a crashed or disconnected agent would)."""
        self._stop.set()
        self._out.put(None)
        self._call.cancel()
