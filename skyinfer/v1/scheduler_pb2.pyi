import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_SCHEDULED: _ClassVar[JobState]
    JOB_STATE_DISPATCHED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
    JOB_STATE_EXPIRED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_SCHEDULED: JobState
JOB_STATE_DISPATCHED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STATE_EXPIRED: JobState

class CaptureInput(_message.Message):
    __slots__ = ("latitude_deg", "longitude_deg", "min_elevation_deg")
    LATITUDE_DEG_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_DEG_FIELD_NUMBER: _ClassVar[int]
    MIN_ELEVATION_DEG_FIELD_NUMBER: _ClassVar[int]
    latitude_deg: float
    longitude_deg: float
    min_elevation_deg: float
    def __init__(self, latitude_deg: _Optional[float] = ..., longitude_deg: _Optional[float] = ..., min_elevation_deg: _Optional[float] = ...) -> None: ...

class UplinkInput(_message.Message):
    __slots__ = ("station",)
    STATION_FIELD_NUMBER: _ClassVar[int]
    station: str
    def __init__(self, station: _Optional[str] = ...) -> None: ...

class OnboardInput(_message.Message):
    __slots__ = ("satellite",)
    SATELLITE_FIELD_NUMBER: _ClassVar[int]
    satellite: str
    def __init__(self, satellite: _Optional[str] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("model_id", "priority", "deadline", "deadline_after", "capture", "uplink", "onboard", "input_bytes", "output_bytes", "tiles", "destination", "input_location")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_AFTER_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    UPLINK_FIELD_NUMBER: _ClassVar[int]
    ONBOARD_FIELD_NUMBER: _ClassVar[int]
    INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    INPUT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    priority: int
    deadline: _timestamp_pb2.Timestamp
    deadline_after: _duration_pb2.Duration
    capture: CaptureInput
    uplink: UplinkInput
    onboard: OnboardInput
    input_bytes: int
    output_bytes: int
    tiles: int
    destination: str
    input_location: str
    def __init__(self, model_id: _Optional[str] = ..., priority: _Optional[int] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., capture: _Optional[_Union[CaptureInput, _Mapping]] = ..., uplink: _Optional[_Union[UplinkInput, _Mapping]] = ..., onboard: _Optional[_Union[OnboardInput, _Mapping]] = ..., input_bytes: _Optional[int] = ..., output_bytes: _Optional[int] = ..., tiles: _Optional[int] = ..., destination: _Optional[str] = ..., input_location: _Optional[str] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("location", "output", "output_bytes", "sha256", "detail")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    location: str
    output: bytes
    output_bytes: int
    sha256: str
    detail: str
    def __init__(self, location: _Optional[str] = ..., output: _Optional[bytes] = ..., output_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Transition(_message.Message):
    __slots__ = ("seq", "from_state", "to_state", "time", "reason", "node")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    from_state: JobState
    to_state: JobState
    time: _timestamp_pb2.Timestamp
    reason: str
    node: str
    def __init__(self, seq: _Optional[int] = ..., from_state: _Optional[_Union[JobState, str]] = ..., to_state: _Optional[_Union[JobState, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "request_id", "spec", "state", "reason", "submit_time", "update_time", "node", "planned_start", "planned_end", "planned_arrival", "result", "transitions")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PLANNED_START_FIELD_NUMBER: _ClassVar[int]
    PLANNED_END_FIELD_NUMBER: _ClassVar[int]
    PLANNED_ARRIVAL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    request_id: str
    spec: JobSpec
    state: JobState
    reason: str
    submit_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    node: str
    planned_start: _timestamp_pb2.Timestamp
    planned_end: _timestamp_pb2.Timestamp
    planned_arrival: _timestamp_pb2.Timestamp
    result: JobResult
    transitions: _containers.RepeatedCompositeFieldContainer[Transition]
    def __init__(self, job_id: _Optional[str] = ..., request_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., reason: _Optional[str] = ..., submit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., node: _Optional[str] = ..., planned_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., planned_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., planned_arrival: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., transitions: _Optional[_Iterable[_Union[Transition, _Mapping]]] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("job", "request_id")
    JOB_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job: JobSpec
    request_id: str
    def __init__(self, job: _Optional[_Union[JobSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job", "created")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job: Job
    created: bool
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "model_id", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    model_id: str
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., model_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WatchJobsRequest(_message.Message):
    __slots__ = ("after_seq", "from_now", "job_ids", "states")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    FROM_NOW_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    from_now: bool
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    def __init__(self, after_seq: _Optional[int] = ..., from_now: _Optional[bool] = ..., job_ids: _Optional[_Iterable[str]] = ..., states: _Optional[_Iterable[_Union[JobState, str]]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("seq", "job_id", "from_state", "to_state", "time", "reason", "node")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    job_id: str
    from_state: JobState
    to_state: JobState
    time: _timestamp_pb2.Timestamp
    reason: str
    node: str
    def __init__(self, seq: _Optional[int] = ..., job_id: _Optional[str] = ..., from_state: _Optional[_Union[JobState, str]] = ..., to_state: _Optional[_Union[JobState, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class GetPlanRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Hop(_message.Message):
    __slots__ = ("to", "start", "end", "bytes")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    to: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    bytes: int
    def __init__(self, to: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bytes: _Optional[int] = ..., **kwargs) -> None: ...

class PlannedJob(_message.Message):
    __slots__ = ("job_id", "status", "node", "start", "end", "arrival", "input_route", "output_route", "model_route", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_FIELD_NUMBER: _ClassVar[int]
    INPUT_ROUTE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ROUTE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ROUTE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: str
    node: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    arrival: _timestamp_pb2.Timestamp
    input_route: _containers.RepeatedCompositeFieldContainer[Hop]
    output_route: _containers.RepeatedCompositeFieldContainer[Hop]
    model_route: _containers.RepeatedCompositeFieldContainer[Hop]
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[str] = ..., node: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., arrival: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., input_route: _Optional[_Iterable[_Union[Hop, _Mapping]]] = ..., output_route: _Optional[_Iterable[_Union[Hop, _Mapping]]] = ..., model_route: _Optional[_Iterable[_Union[Hop, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class PlanView(_message.Message):
    __slots__ = ("policy", "objective", "bound", "gap", "planned_at", "epoch", "wall_s", "status", "jobs")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    PLANNED_AT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    policy: str
    objective: float
    bound: float
    gap: float
    planned_at: _timestamp_pb2.Timestamp
    epoch: _timestamp_pb2.Timestamp
    wall_s: float
    status: str
    jobs: _containers.RepeatedCompositeFieldContainer[PlannedJob]
    def __init__(self, policy: _Optional[str] = ..., objective: _Optional[float] = ..., bound: _Optional[float] = ..., gap: _Optional[float] = ..., planned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., epoch: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., wall_s: _Optional[float] = ..., status: _Optional[str] = ..., jobs: _Optional[_Iterable[_Union[PlannedJob, _Mapping]]] = ...) -> None: ...
