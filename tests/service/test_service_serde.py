"""Proto <-> domain conversion: every valid job survives the round trip through the wire format and the
store's JSON; every invalid one is refused with the field's name."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from scheduler import serde
from scheduler.store import JobRecord, JobSpec, JobState
from scheduler.types import CaptureSource, OnboardSource, UplinkSource
from skyinfer.errors import InputError
from skyinfer.v1 import scheduler_pb2 as pb

NOW = datetime(2023, 4, 20, 0, 1, tzinfo=UTC)

sources = st.one_of(
    st.builds(CaptureSource, st.floats(-90, 90), st.floats(-180, 180), st.floats(1, 89)),
    st.builds(UplinkSource, st.one_of(st.none(), st.sampled_from(["Svalbard", "Inuvik"]))),
    st.builds(OnboardSource, st.sampled_from(["SKYSAT-C1", "SKYSAT-C2"])),
)
specs = st.builds(
    JobSpec,
    model_id=st.sampled_from(["tiny@1", "cloudmask@1", "a.b-c_d@2.0"]),
    priority=st.integers(1, 1000),
    deadline_utc=st.integers(1, 30 * 86400 * 1000).map(lambda ms: NOW + timedelta(milliseconds=ms)),
    source=sources,
    input_bytes=st.integers(0, 10**15),
    output_bytes=st.integers(0, 10**15),
    tiles=st.integers(1, 10**7),
    destination=st.one_of(st.none(), st.just("Svalbard")),
    input_location=st.text(max_size=50),
)


@given(specs)
def test_spec_round_trips_through_proto_and_json(spec: JobSpec) -> None:
    wire = pb.JobSpec.FromString(serde.job_spec_to_proto(spec).SerializeToString())
    assert serde.job_spec_from_proto(wire, now=NOW) == spec
    assert JobSpec.from_json(spec.to_json()) == spec
    # The stored text stays canonical JSON (it is compared to tell retries from new jobs).
    assert spec.to_json() == json.dumps(json.loads(spec.to_json()), sort_keys=True, separators=(",", ":"))


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(-timedelta(hours=8))])))
def test_timestamps_equal_protobufs_own_conversion(dt: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(dt.astimezone(UTC))
    assert serde.timestamp_from_datetime(dt) == expected


@given(specs, st.booleans(), st.text(max_size=20))
def test_submit_reply_shows_the_stored_job(spec: JobSpec, created: bool, request_id: str) -> None:
    job = JobRecord(job_id="job-x", request_id=request_id, spec=spec, state=JobState.PENDING, reason="submitted",
                    submit_utc=NOW, update_utc=NOW, row=3)
    reply = pb.SubmitJobResponse.FromString(serde.submit_reply(job, created).SerializeToString())
    assert reply.created is created
    assert reply.job == serde.job_to_proto(job)
    assert (reply.job.job_id, reply.job.request_id, reply.job.reason) == ("job-x", request_id, "submitted")
    assert reply.job.state == pb.JOB_STATE_PENDING
    assert serde.datetime_from_timestamp(reply.job.submit_time, field="t") == NOW
    assert serde.job_spec_from_proto(reply.job.spec, now=NOW) == spec
    assert reply.job.spec.WhichOneof("source") == spec.source.kind


@given(st.integers(1, 366 * 86400))
def test_relative_deadline_counts_from_submit(after_s: int) -> None:
    msg = pb.JobSpec(model_id="tiny@1")
    msg.deadline_after.seconds = after_s
    assert serde.job_spec_from_proto(msg, now=NOW).deadline_utc == NOW + timedelta(seconds=after_s)


def test_fingerprint_tells_requests_apart() -> None:
    a = pb.JobSpec(model_id="tiny@1", tiles=3)
    a.deadline_after.seconds = 7200
    b = pb.JobSpec.FromString(a.SerializeToString())
    assert serde.request_fingerprint(a) == serde.request_fingerprint(b)
    b.tiles = 4
    assert serde.request_fingerprint(a) != serde.request_fingerprint(b)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda m: m.deadline.CopyFrom(Timestamp(seconds=-5)), "deadline"),
    (lambda m: setattr(m.deadline_after, "nanos", 2_000_000_000), "deadline_after"),
    (lambda m: m.capture.CopyFrom(pb.CaptureInput(latitude_deg=float("inf"))), "capture.latitude_deg"),
])
def test_malformed_wire_values_name_the_field(mutate: object, field: str) -> None:
    msg = pb.JobSpec(model_id="tiny@1")
    msg.deadline_after.seconds = 60
    mutate(msg)  # type: ignore[operator]
    with pytest.raises(InputError, match=f"^{field}"):
        serde.job_spec_from_proto(msg, now=NOW)
