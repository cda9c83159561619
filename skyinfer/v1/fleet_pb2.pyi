from skyinfer.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORK_STATUS_UNSPECIFIED: _ClassVar[WorkStatus]
    WORK_STATUS_OK: _ClassVar[WorkStatus]
    WORK_STATUS_FAILED: _ClassVar[WorkStatus]
    WORK_STATUS_CANCELLED: _ClassVar[WorkStatus]
WORK_STATUS_UNSPECIFIED: WorkStatus
WORK_STATUS_OK: WorkStatus
WORK_STATUS_FAILED: WorkStatus
WORK_STATUS_CANCELLED: WorkStatus

class AgentMessage(_message.Message):
    __slots__ = ("register", "heartbeat", "result", "started")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    register: Register
    heartbeat: Heartbeat
    result: WorkResult
    started: WorkStarted
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., result: _Optional[_Union[WorkResult, _Mapping]] = ..., started: _Optional[_Union[WorkStarted, _Mapping]] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("node_id", "profile", "resident_models", "agent_address", "agent_version", "status", "pending_work_ids")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_MODELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PENDING_WORK_IDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    profile: str
    resident_models: _containers.RepeatedScalarFieldContainer[str]
    agent_address: str
    agent_version: str
    status: NodeStatus
    pending_work_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., profile: _Optional[str] = ..., resident_models: _Optional[_Iterable[str]] = ..., agent_address: _Optional[str] = ..., agent_version: _Optional[str] = ..., status: _Optional[_Union[NodeStatus, _Mapping]] = ..., pending_work_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("status", "sent_unix_s")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    status: NodeStatus
    sent_unix_s: float
    def __init__(self, status: _Optional[_Union[NodeStatus, _Mapping]] = ..., sent_unix_s: _Optional[float] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "profile", "slots_total", "slots_in_use", "queue_length", "energy_used_wh", "link_up", "models", "memory_used_bytes", "memory_total_bytes", "results_pending", "serving", "inferences_total", "compute_gflops")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_IN_USE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ENERGY_USED_WH_FIELD_NUMBER: _ClassVar[int]
    LINK_UP_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESULTS_PENDING_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    INFERENCES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_GFLOPS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    profile: str
    slots_total: int
    slots_in_use: int
    queue_length: int
    energy_used_wh: float
    link_up: bool
    models: _containers.RepeatedScalarFieldContainer[str]
    memory_used_bytes: int
    memory_total_bytes: int
    results_pending: int
    serving: bool
    inferences_total: int
    compute_gflops: float
    def __init__(self, node_id: _Optional[str] = ..., profile: _Optional[str] = ..., slots_total: _Optional[int] = ..., slots_in_use: _Optional[int] = ..., queue_length: _Optional[int] = ..., energy_used_wh: _Optional[float] = ..., link_up: _Optional[bool] = ..., models: _Optional[_Iterable[str]] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., results_pending: _Optional[int] = ..., serving: _Optional[bool] = ..., inferences_total: _Optional[int] = ..., compute_gflops: _Optional[float] = ...) -> None: ...

class WorkStarted(_message.Message):
    __slots__ = ("work_id", "job_id", "started_unix_s")
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    job_id: str
    started_unix_s: float
    def __init__(self, work_id: _Optional[str] = ..., job_id: _Optional[str] = ..., started_unix_s: _Optional[float] = ...) -> None: ...

class WorkResult(_message.Message):
    __slots__ = ("work_id", "job_id", "node_id", "status", "outputs", "output_location", "output_bytes", "tiles_done", "real_ms", "emulated_ms", "energy_wh", "error", "started_unix_s", "finished_unix_s")
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TILES_DONE_FIELD_NUMBER: _ClassVar[int]
    REAL_MS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_MS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_WH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    job_id: str
    node_id: str
    status: WorkStatus
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    output_location: str
    output_bytes: int
    tiles_done: int
    real_ms: float
    emulated_ms: float
    energy_wh: float
    error: str
    started_unix_s: float
    finished_unix_s: float
    def __init__(self, work_id: _Optional[str] = ..., job_id: _Optional[str] = ..., node_id: _Optional[str] = ..., status: _Optional[_Union[WorkStatus, str]] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., output_location: _Optional[str] = ..., output_bytes: _Optional[int] = ..., tiles_done: _Optional[int] = ..., real_ms: _Optional[float] = ..., emulated_ms: _Optional[float] = ..., energy_wh: _Optional[float] = ..., error: _Optional[str] = ..., started_unix_s: _Optional[float] = ..., finished_unix_s: _Optional[float] = ...) -> None: ...

class SchedulerMessage(_message.Message):
    __slots__ = ("registered", "work", "ack", "cancel", "set_link")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    WORK_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    SET_LINK_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    work: Work
    ack: ResultAck
    cancel: Cancel
    set_link: SetLink
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., work: _Optional[_Union[Work, _Mapping]] = ..., ack: _Optional[_Union[ResultAck, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., set_link: _Optional[_Union[SetLink, _Mapping]] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("node_id", "heartbeat_interval_s", "scheduler_version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    heartbeat_interval_s: float
    scheduler_version: str
    def __init__(self, node_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., scheduler_version: _Optional[str] = ...) -> None: ...

class Work(_message.Message):
    __slots__ = ("work_id", "job_id", "model_id", "inputs", "tiles", "not_before_unix_s", "simulated_clock", "return_outputs")
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_CLOCK_FIELD_NUMBER: _ClassVar[int]
    RETURN_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    job_id: str
    model_id: str
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    tiles: int
    not_before_unix_s: float
    simulated_clock: bool
    return_outputs: bool
    def __init__(self, work_id: _Optional[str] = ..., job_id: _Optional[str] = ..., model_id: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., tiles: _Optional[int] = ..., not_before_unix_s: _Optional[float] = ..., simulated_clock: _Optional[bool] = ..., return_outputs: _Optional[bool] = ...) -> None: ...

class ResultAck(_message.Message):
    __slots__ = ("work_id",)
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    def __init__(self, work_id: _Optional[str] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("work_id",)
    WORK_ID_FIELD_NUMBER: _ClassVar[int]
    work_id: str
    def __init__(self, work_id: _Optional[str] = ...) -> None: ...

class SetLink(_message.Message):
    __slots__ = ("up",)
    UP_FIELD_NUMBER: _ClassVar[int]
    up: bool
    def __init__(self, up: _Optional[bool] = ...) -> None: ...
