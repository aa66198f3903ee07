import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from llmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CacheInvalidated(_message.Message):
    __slots__ = ("event_id", "tenant_id", "issued_at", "all", "use_case", "content_version")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    tenant_id: str
    issued_at: _timestamp_pb2.Timestamp
    all: bool
    use_case: str
    content_version: _common_pb2.ContentVersion
    def __init__(self, event_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., all: _Optional[bool] = ..., use_case: _Optional[str] = ..., content_version: _Optional[_Union[_common_pb2.ContentVersion, _Mapping]] = ...) -> None: ...

class ApiKeyRevoked(_message.Message):
    __slots__ = ("event_id", "key_id", "tenant_id", "revoked_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    key_id: str
    tenant_id: str
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., key_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ModelLoad(_message.Message):
    __slots__ = ("event_id", "model", "region", "backend", "utilization", "active", "queued", "capacity", "max_queue", "time_to_first_token_p50_ms", "time_to_first_token_p95_ms", "tokens_per_second_p50", "window_s", "observed_at", "crossed_percent")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_P50_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_P95_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_P50_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    CROSSED_PERCENT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    model: str
    region: str
    backend: str
    utilization: float
    active: int
    queued: int
    capacity: int
    max_queue: int
    time_to_first_token_p50_ms: float
    time_to_first_token_p95_ms: float
    tokens_per_second_p50: float
    window_s: float
    observed_at: _timestamp_pb2.Timestamp
    crossed_percent: int
    def __init__(self, event_id: _Optional[str] = ..., model: _Optional[str] = ..., region: _Optional[str] = ..., backend: _Optional[str] = ..., utilization: _Optional[float] = ..., active: _Optional[int] = ..., queued: _Optional[int] = ..., capacity: _Optional[int] = ..., max_queue: _Optional[int] = ..., time_to_first_token_p50_ms: _Optional[float] = ..., time_to_first_token_p95_ms: _Optional[float] = ..., tokens_per_second_p50: _Optional[float] = ..., window_s: _Optional[float] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., crossed_percent: _Optional[int] = ...) -> None: ...
