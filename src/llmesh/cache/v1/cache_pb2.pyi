import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from llmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LookupOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOOKUP_OUTCOME_UNSPECIFIED: _ClassVar[LookupOutcome]
    LOOKUP_OUTCOME_MISS: _ClassVar[LookupOutcome]
    LOOKUP_OUTCOME_EXACT_HIT: _ClassVar[LookupOutcome]
    LOOKUP_OUTCOME_SEMANTIC_HIT: _ClassVar[LookupOutcome]
LOOKUP_OUTCOME_UNSPECIFIED: LookupOutcome
LOOKUP_OUTCOME_MISS: LookupOutcome
LOOKUP_OUTCOME_EXACT_HIT: LookupOutcome
LOOKUP_OUTCOME_SEMANTIC_HIT: LookupOutcome

class CacheKey(_message.Message):
    __slots__ = ("tenant_id", "use_case", "messages", "model", "sampling", "max_tokens")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    use_case: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    model: str
    sampling: _common_pb2.SamplingParams
    max_tokens: int
    def __init__(self, tenant_id: _Optional[str] = ..., use_case: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., model: _Optional[str] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class CachedAnswer(_message.Message):
    __slots__ = ("entry_id", "content", "model", "backend", "tier", "usage", "cost_usd", "created_at", "expires_at")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    content: str
    model: str
    backend: str
    tier: _common_pb2.Tier
    usage: _common_pb2.Usage
    cost_usd: float
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, entry_id: _Optional[str] = ..., content: _Optional[str] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: CacheKey
    def __init__(self, key: _Optional[_Union[CacheKey, _Mapping]] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("outcome", "answer")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    outcome: LookupOutcome
    answer: CachedAnswer
    def __init__(self, outcome: _Optional[_Union[LookupOutcome, str]] = ..., answer: _Optional[_Union[CachedAnswer, _Mapping]] = ...) -> None: ...

class StoreRequest(_message.Message):
    __slots__ = ("key", "content", "model", "backend", "tier", "usage", "cost_usd", "ttl_seconds", "content_versions")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    key: CacheKey
    content: str
    model: str
    backend: str
    tier: _common_pb2.Tier
    usage: _common_pb2.Usage
    cost_usd: float
    ttl_seconds: int
    content_versions: _containers.RepeatedCompositeFieldContainer[_common_pb2.ContentVersion]
    def __init__(self, key: _Optional[_Union[CacheKey, _Mapping]] = ..., content: _Optional[str] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., ttl_seconds: _Optional[int] = ..., content_versions: _Optional[_Iterable[_Union[_common_pb2.ContentVersion, _Mapping]]] = ...) -> None: ...

class StoreResponse(_message.Message):
    __slots__ = ("entry_id",)
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    def __init__(self, entry_id: _Optional[str] = ...) -> None: ...

class InvalidateRequest(_message.Message):
    __slots__ = ("tenant_id", "all", "use_case", "content_version")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    all: bool
    use_case: str
    content_version: _common_pb2.ContentVersion
    def __init__(self, tenant_id: _Optional[str] = ..., all: _Optional[bool] = ..., use_case: _Optional[str] = ..., content_version: _Optional[_Union[_common_pb2.ContentVersion, _Mapping]] = ...) -> None: ...

class InvalidateResponse(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...
