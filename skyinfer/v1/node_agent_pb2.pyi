from skyinfer.v1 import fleet_pb2 as _fleet_pb2
from skyinfer.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadModelChunk(_message.Message):
    __slots__ = ("model_id", "sha256", "total_size_bytes", "data", "path", "memory_bytes", "gflop_per_inference")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GFLOP_PER_INFERENCE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    sha256: str
    total_size_bytes: int
    data: bytes
    path: str
    memory_bytes: int
    gflop_per_inference: float
    def __init__(self, model_id: _Optional[str] = ..., sha256: _Optional[str] = ..., total_size_bytes: _Optional[int] = ..., data: _Optional[bytes] = ..., path: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., gflop_per_inference: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "sha256", "size_bytes", "memory_bytes", "gflop_per_inference", "inputs", "outputs", "warmup_ms", "emulated_ms_per_inference")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GFLOP_PER_INFERENCE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_MS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_MS_PER_INFERENCE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    sha256: str
    size_bytes: int
    memory_bytes: int
    gflop_per_inference: float
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    warmup_ms: float
    emulated_ms_per_inference: float
    def __init__(self, model_id: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gflop_per_inference: _Optional[float] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., warmup_ms: _Optional[float] = ..., emulated_ms_per_inference: _Optional[float] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model_id", "delete_from_store")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DELETE_FROM_STORE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    delete_from_store: bool
    def __init__(self, model_id: _Optional[str] = ..., delete_from_store: _Optional[bool] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("unloaded",)
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    unloaded: bool
    def __init__(self, unloaded: _Optional[bool] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("model_id", "inputs", "request_id", "simulated_clock")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_CLOCK_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    request_id: str
    simulated_clock: bool
    def __init__(self, model_id: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., request_id: _Optional[str] = ..., simulated_clock: _Optional[bool] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("model_id", "outputs", "request_id", "real_ms", "emulated_ms", "queue_ms", "energy_wh")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REAL_MS_FIELD_NUMBER: _ClassVar[int]
    EMULATED_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_WH_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Tensor]
    request_id: str
    real_ms: float
    emulated_ms: float
    queue_ms: float
    energy_wh: float
    def __init__(self, model_id: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.Tensor, _Mapping]]] = ..., request_id: _Optional[str] = ..., real_ms: _Optional[float] = ..., emulated_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., energy_wh: _Optional[float] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
