from llmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hosting(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOSTING_UNSPECIFIED: _ClassVar[Hosting]
    HOSTING_SELF_HOSTED: _ClassVar[Hosting]
    HOSTING_EXTERNAL: _ClassVar[Hosting]
HOSTING_UNSPECIFIED: Hosting
HOSTING_SELF_HOSTED: Hosting
HOSTING_EXTERNAL: Hosting

class GenerateRequest(_message.Message):
    __slots__ = ("model", "messages", "max_tokens", "sampling", "request_id", "batch")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    max_tokens: int
    sampling: _common_pb2.SamplingParams
    request_id: str
    batch: bool
    def __init__(self, model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., request_id: _Optional[str] = ..., batch: _Optional[bool] = ...) -> None: ...

class GenerateCompletion(_message.Message):
    __slots__ = ("usage", "finish_reason", "time_to_first_token_ms", "total_time_ms", "model", "backend")
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    usage: _common_pb2.Usage
    finish_reason: _common_pb2.FinishReason
    time_to_first_token_ms: float
    total_time_ms: float
    model: str
    backend: str
    def __init__(self, usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., time_to_first_token_ms: _Optional[float] = ..., total_time_ms: _Optional[float] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("delta", "completion")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    delta: str
    completion: GenerateCompletion
    def __init__(self, delta: _Optional[str] = ..., completion: _Optional[_Union[GenerateCompletion, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "backend", "context_length", "max_concurrency", "active_requests", "queued_requests", "max_queue", "tiers", "region", "hosting", "max_sensitivity", "prompt_price_per_1k", "completion_price_per_1k", "gpu_hour_cost", "capacity", "endpoint", "remote_model", "batch_model", "fallback", "utilization", "latency")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    HOSTING_FIELD_NUMBER: _ClassVar[int]
    MAX_SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_PRICE_PER_1K_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_PRICE_PER_1K_FIELD_NUMBER: _ClassVar[int]
    GPU_HOUR_COST_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REMOTE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_MODEL_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    name: str
    backend: str
    context_length: int
    max_concurrency: int
    active_requests: int
    queued_requests: int
    max_queue: int
    tiers: _containers.RepeatedScalarFieldContainer[int]
    region: str
    hosting: Hosting
    max_sensitivity: _common_pb2.Sensitivity
    prompt_price_per_1k: float
    completion_price_per_1k: float
    gpu_hour_cost: float
    capacity: int
    endpoint: str
    remote_model: str
    batch_model: str
    fallback: bool
    utilization: float
    latency: LatencyStats
    def __init__(self, name: _Optional[str] = ..., backend: _Optional[str] = ..., context_length: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., active_requests: _Optional[int] = ..., queued_requests: _Optional[int] = ..., max_queue: _Optional[int] = ..., tiers: _Optional[_Iterable[int]] = ..., region: _Optional[str] = ..., hosting: _Optional[_Union[Hosting, str]] = ..., max_sensitivity: _Optional[_Union[_common_pb2.Sensitivity, str]] = ..., prompt_price_per_1k: _Optional[float] = ..., completion_price_per_1k: _Optional[float] = ..., gpu_hour_cost: _Optional[float] = ..., capacity: _Optional[int] = ..., endpoint: _Optional[str] = ..., remote_model: _Optional[str] = ..., batch_model: _Optional[str] = ..., fallback: _Optional[bool] = ..., utilization: _Optional[float] = ..., latency: _Optional[_Union[LatencyStats, _Mapping]] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("window_s", "samples", "time_to_first_token_p50_ms", "time_to_first_token_p95_ms", "tokens_per_second_p50")
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_P50_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_P95_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_P50_FIELD_NUMBER: _ClassVar[int]
    window_s: float
    samples: int
    time_to_first_token_p50_ms: float
    time_to_first_token_p95_ms: float
    tokens_per_second_p50: float
    def __init__(self, window_s: _Optional[float] = ..., samples: _Optional[int] = ..., time_to_first_token_p50_ms: _Optional[float] = ..., time_to_first_token_p95_ms: _Optional[float] = ..., tokens_per_second_p50: _Optional[float] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
