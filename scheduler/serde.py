"""The only place where protobuf messages meet the scheduler's domain types.

Conversions from protos validate and raise :class:`~skyinfer.errors.InputError` whose message starts with
the field name (``deadline: before submit time``); the servicers turn it into INVALID_ARGUMENT.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta
from typing import cast

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from scheduler.store import JobRecord, JobResult, JobSpec, JobState, StoredPlan, TransitionRecord
from scheduler.types import CaptureSource, Hop, JobSource, OnboardSource, UplinkSource
from skyinfer.errors import InputError
from skyinfer.v1 import fleet_pb2
from skyinfer.v1 import scheduler_pb2 as pb

_STATE_TO_PB: dict[JobState, pb.JobState] = {
    s: cast(pb.JobState, pb.JobState.Value(f"JOB_STATE_{s.value}")) for s in JobState
}
_STATE_FROM_PB: dict[int, JobState] = {int(v): k for k, v in _STATE_TO_PB.items()}
DEFAULT_MIN_ELEVATION_DEG = 30.0
# Timestamps outside years 1..9999 are rejected by protobuf itself; keep a saner window.
_MIN_UNIX_S = 0
_MAX_UNIX_S = 253402300799
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def state_to_proto(state: JobState | None) -> pb.JobState:
    return cast(pb.JobState, 0) if state is None else _STATE_TO_PB[state]


def state_from_proto(value: int, *, field: str = "states") -> JobState:
    try:
        return _STATE_FROM_PB[value]
    except KeyError:
        raise InputError(f"{field}: unknown job state {value}") from None


def timestamp_from_datetime(dt: datetime) -> Timestamp:
    """``Timestamp.FromDatetime`` in exact integer arithmetic: the same value (nanos in [0, 1e9), seconds
    floored), without protobuf's Python-level helper, which cost more than the rest of building a reply."""
    if dt.tzinfo is None:
        dt = dt.astimezone(UTC)  # what FromDatetime(dt.astimezone(UTC)) did: a naive time is local time
    delta = dt - _UNIX_EPOCH
    return Timestamp(seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000)


def datetime_from_timestamp(ts: Timestamp, *, field: str) -> datetime:
    if not _MIN_UNIX_S <= ts.seconds <= _MAX_UNIX_S or not 0 <= ts.nanos < 1_000_000_000:
        raise InputError(f"{field}: not a valid timestamp (seconds={ts.seconds}, nanos={ts.nanos})")
    return ts.ToDatetime(tzinfo=UTC)


def seconds_from_duration(d: Duration, *, field: str) -> float:
    if not 0 <= d.nanos < 1_000_000_000 and not -1_000_000_000 < d.nanos <= 0:
        raise InputError(f"{field}: not a valid duration")
    return d.seconds + d.nanos / 1e9


def _finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise InputError(f"{field}: must be a finite number, got {value!r}")
    return value


def job_spec_from_proto(msg: pb.JobSpec, *, now: datetime) -> JobSpec:
    """Convert and check a requested job; relative deadlines count from ``now`` (the submit time)."""
    if not msg.model_id:
        raise InputError("model_id: required (name@version)")
    which = msg.WhichOneof("deadline_spec")
    if which == "deadline":
        deadline = datetime_from_timestamp(msg.deadline, field="deadline")
    elif which == "deadline_after":
        after_s = seconds_from_duration(msg.deadline_after, field="deadline_after")
        if after_s <= 0:
            raise InputError(f"deadline_after: must be positive, got {after_s:g} s")
        if after_s > 366 * 86400:
            raise InputError(f"deadline_after: more than a year ({after_s:g} s)")
        deadline = now + timedelta(seconds=after_s)
    else:
        raise InputError("deadline: required (an absolute deadline or deadline_after)")
    if msg.priority < 0:
        raise InputError(f"priority: must be in [1, 1000], got {msg.priority}")
    if msg.tiles < 0:
        raise InputError(f"tiles: must be in [1, 10000000], got {msg.tiles}")
    source: JobSource
    kind = msg.WhichOneof("source")
    if kind == "capture":
        c = msg.capture
        source = CaptureSource(
            latitude_deg=_finite(c.latitude_deg, "capture.latitude_deg"),
            longitude_deg=_finite(c.longitude_deg, "capture.longitude_deg"),
            min_elevation_deg=_finite(c.min_elevation_deg, "capture.min_elevation_deg") or DEFAULT_MIN_ELEVATION_DEG,
        )
    elif kind == "onboard":
        source = OnboardSource(msg.onboard.satellite)
    else:
        source = UplinkSource(msg.uplink.station or None) if kind == "uplink" else UplinkSource(None)
    return JobSpec(
        model_id=msg.model_id, priority=msg.priority or 1, deadline_utc=deadline, source=source,
        input_bytes=msg.input_bytes, output_bytes=msg.output_bytes, tiles=msg.tiles or 1,
        destination=msg.destination or None, input_location=msg.input_location,
    )


def request_fingerprint(msg: pb.JobSpec) -> str:
    """Identity of a job request as sent (deterministic serialization, hashed): tells a retry from a new job."""
    return hashlib.sha256(msg.SerializeToString(deterministic=True)).hexdigest()


def job_spec_to_proto(spec: JobSpec) -> pb.JobSpec:
    msg = pb.JobSpec()
    _fill_job_spec(msg, spec)
    return msg


def _fill_job_spec(msg: pb.JobSpec, spec: JobSpec) -> None:
    # Filled in place (fields set one by one, sub-messages through their attribute): building sub-messages
    # and copying them in (CopyFrom, keyword arguments) doubled the cost of every SubmitJob reply.
    msg.model_id = spec.model_id
    msg.priority = spec.priority
    msg.input_bytes = spec.input_bytes
    msg.output_bytes = spec.output_bytes
    msg.tiles = spec.tiles
    if spec.destination:
        msg.destination = spec.destination
    if spec.input_location:
        msg.input_location = spec.input_location
    _fill_timestamp(msg.deadline, spec.deadline_utc)
    src = spec.source
    if isinstance(src, CaptureSource):
        capture = msg.capture
        capture.latitude_deg = src.latitude_deg
        capture.longitude_deg = src.longitude_deg
        capture.min_elevation_deg = src.min_elevation_deg
    elif isinstance(src, OnboardSource):
        msg.onboard.satellite = src.satellite
    else:
        msg.uplink.SetInParent()  # present even when empty: "uplink from any station"
        if src.station:
            msg.uplink.station = src.station


def _fill_timestamp(ts: Timestamp, dt: datetime) -> None:
    if dt.tzinfo is None:
        dt = dt.astimezone(UTC)
    delta = dt - _UNIX_EPOCH
    ts.seconds = delta.days * 86400 + delta.seconds
    ts.nanos = delta.microseconds * 1000


def transition_to_proto(t: TransitionRecord) -> pb.Transition:
    return pb.Transition(seq=t.seq, from_state=state_to_proto(t.from_state), to_state=state_to_proto(t.to_state),
                         time=timestamp_from_datetime(t.time_utc), reason=t.reason, node=t.node)


def event_to_proto(t: TransitionRecord) -> pb.JobEvent:
    return pb.JobEvent(seq=t.seq, job_id=t.job_id, from_state=state_to_proto(t.from_state),
                       to_state=state_to_proto(t.to_state), time=timestamp_from_datetime(t.time_utc),
                       reason=t.reason, node=t.node)


def job_to_proto(job: JobRecord, transitions: list[TransitionRecord] | None = None, *,
                 inline_output: bool = True) -> pb.Job:
    """A job as the API shows it; ``inline_output=False`` leaves inline result bytes out (list pages)."""
    msg = pb.Job()
    fill_job(msg, job, transitions, inline_output=inline_output)
    return msg


def submit_reply(job: JobRecord, created: bool) -> pb.SubmitJobResponse:
    """The ``SubmitJob`` reply, its job filled in place (no copy of a separately built message)."""
    reply = pb.SubmitJobResponse(created=created)
    fill_job(reply.job, job)
    return reply


def fill_job(msg: pb.Job, job: JobRecord, transitions: list[TransitionRecord] | None = None, *,
             inline_output: bool = True) -> None:
    """Fill an empty ``pb.Job`` from ``job`` (see :func:`job_to_proto`)."""
    msg.job_id = job.job_id
    if job.request_id:
        msg.request_id = job.request_id
    _fill_job_spec(msg.spec, job.spec)
    msg.state = _STATE_TO_PB[job.state]
    if job.reason:
        msg.reason = job.reason
    _fill_timestamp(msg.submit_time, job.submit_utc)
    _fill_timestamp(msg.update_time, job.update_utc)
    if job.node:
        msg.node = job.node
    if job.placement is not None:
        _fill_timestamp(msg.planned_start, job.placement.start_utc)
        _fill_timestamp(msg.planned_end, job.placement.end_utc)
        _fill_timestamp(msg.planned_arrival, job.placement.arrival_utc)
    if job.result is not None:
        r = job.result
        msg.result.CopyFrom(pb.JobResult(location=r.location, output=r.output if inline_output else b"",
                                         output_bytes=r.output_bytes,
                                         sha256=r.sha256, detail=r.detail))
    if transitions:
        msg.transitions.extend(transition_to_proto(t) for t in transitions)


def _hops_to_proto(epoch: datetime, hops: tuple[Hop, ...]) -> list[pb.Hop]:
    out = []
    for h in hops:
        hop = pb.Hop(to=h.dst, bytes=h.bytes)
        setattr(hop, "from", h.src)  # `from` is a Python keyword
        hop.start.CopyFrom(timestamp_from_datetime(epoch + timedelta(seconds=h.start_s)))
        hop.end.CopyFrom(timestamp_from_datetime(epoch + timedelta(seconds=h.end_s)))
        out.append(hop)
    return out


def plan_to_proto(stored: StoredPlan) -> pb.PlanView:
    plan, epoch = stored.plan, stored.epoch_utc
    msg = pb.PlanView(policy=plan.policy, objective=plan.objective, bound=plan.bound, gap=plan.gap,
                      planned_at=timestamp_from_datetime(stored.planned_at_utc),
                      epoch=timestamp_from_datetime(epoch), wall_s=plan.wall_s, status=plan.status)
    for s in plan.scheduled:
        pj = pb.PlannedJob(job_id=s.job_id, status="scheduled", node=s.node,
                           start=timestamp_from_datetime(epoch + timedelta(seconds=s.start_s)),
                           end=timestamp_from_datetime(epoch + timedelta(seconds=s.end_s)),
                           arrival=timestamp_from_datetime(epoch + timedelta(seconds=s.arrival_s)))
        pj.input_route.extend(_hops_to_proto(epoch, s.input_route))
        pj.output_route.extend(_hops_to_proto(epoch, s.output_route))
        pj.model_route.extend(_hops_to_proto(epoch, s.model_route))
        msg.jobs.append(pj)
    for u in plan.unschedulable:
        msg.jobs.append(pb.PlannedJob(job_id=u.job_id, status="unschedulable", reason=u.reason))
    return msg


# -- Fleet ---------------------------------------------------------------------------------------------------


def work_result_from_proto(msg: fleet_pb2.WorkResult) -> tuple[JobState, JobResult, str]:
    """A node's result as (terminal state, stored result, reason)."""
    if not msg.work_id:
        raise InputError("result.work_id: required")
    if msg.status == fleet_pb2.WORK_STATUS_OK:
        state, reason = JobState.SUCCEEDED, f"completed on {msg.node_id}: {msg.tiles_done} tiles"
    elif msg.status == fleet_pb2.WORK_STATUS_FAILED:
        state, reason = JobState.FAILED, f"failed on {msg.node_id}: {msg.error or 'no detail'}"
    elif msg.status == fleet_pb2.WORK_STATUS_CANCELLED:
        state, reason = JobState.CANCELLED, f"cancelled on {msg.node_id}"
    else:
        raise InputError(f"result.status: unknown work status {msg.status}")
    output = b"".join(t.SerializeToString() for t in msg.outputs) if msg.outputs else b""
    detail = (f"tiles_done={msg.tiles_done} real_ms={msg.real_ms:.1f} emulated_ms={msg.emulated_ms:.1f} "
              f"energy_wh={msg.energy_wh:.6f}")
    if msg.error:
        detail += f" error={msg.error}"
    result = JobResult(location=msg.output_location, output=output, output_bytes=int(msg.output_bytes),
                       detail=detail)
    return state, result, reason
