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

class SemanticDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEMANTIC_DECISION_UNSPECIFIED: _ClassVar[SemanticDecision]
    SEMANTIC_DECISION_HIT: _ClassVar[SemanticDecision]
    SEMANTIC_DECISION_GRAY_HIT: _ClassVar[SemanticDecision]
    SEMANTIC_DECISION_GRAY_MISS: _ClassVar[SemanticDecision]
    SEMANTIC_DECISION_MISS: _ClassVar[SemanticDecision]

class Rating(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RATING_UNSPECIFIED: _ClassVar[Rating]
    RATING_THUMBS_UP: _ClassVar[Rating]
    RATING_THUMBS_DOWN: _ClassVar[Rating]
LOOKUP_OUTCOME_UNSPECIFIED: LookupOutcome
LOOKUP_OUTCOME_MISS: LookupOutcome
LOOKUP_OUTCOME_EXACT_HIT: LookupOutcome
LOOKUP_OUTCOME_SEMANTIC_HIT: LookupOutcome
SEMANTIC_DECISION_UNSPECIFIED: SemanticDecision
SEMANTIC_DECISION_HIT: SemanticDecision
SEMANTIC_DECISION_GRAY_HIT: SemanticDecision
SEMANTIC_DECISION_GRAY_MISS: SemanticDecision
SEMANTIC_DECISION_MISS: SemanticDecision
RATING_UNSPECIFIED: Rating
RATING_THUMBS_UP: Rating
RATING_THUMBS_DOWN: Rating

class CacheKey(_message.Message):
    __slots__ = ("tenant_id", "use_case", "messages", "model", "sampling", "max_tokens", "sensitivity")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    use_case: str
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    model: str
    sampling: _common_pb2.SamplingParams
    max_tokens: int
    sensitivity: _common_pb2.Sensitivity
    def __init__(self, tenant_id: _Optional[str] = ..., use_case: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., model: _Optional[str] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., max_tokens: _Optional[int] = ..., sensitivity: _Optional[_Union[_common_pb2.Sensitivity, str]] = ...) -> None: ...

class CachedAnswer(_message.Message):
    __slots__ = ("entry_id", "content", "model", "backend", "tier", "usage", "cost_usd", "created_at", "expires_at", "pinned", "content_versions", "content_class")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    CONTENT_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_CLASS_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    content: str
    model: str
    backend: str
    tier: _common_pb2.Tier
    usage: _common_pb2.Usage
    cost_usd: float
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    pinned: bool
    content_versions: _containers.RepeatedCompositeFieldContainer[_common_pb2.ContentVersion]
    content_class: str
    def __init__(self, entry_id: _Optional[str] = ..., content: _Optional[str] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pinned: _Optional[bool] = ..., content_versions: _Optional[_Iterable[_Union[_common_pb2.ContentVersion, _Mapping]]] = ..., content_class: _Optional[str] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("key", "tier", "exact_only", "business_unit", "lookup_follows", "semantic_only")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    EXACT_ONLY_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_UNIT_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_FOLLOWS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_ONLY_FIELD_NUMBER: _ClassVar[int]
    key: CacheKey
    tier: _common_pb2.Tier
    exact_only: bool
    business_unit: str
    lookup_follows: bool
    semantic_only: bool
    def __init__(self, key: _Optional[_Union[CacheKey, _Mapping]] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., exact_only: _Optional[bool] = ..., business_unit: _Optional[str] = ..., lookup_follows: _Optional[bool] = ..., semantic_only: _Optional[bool] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("outcome", "answer", "semantic_decision", "similarity", "uncacheable")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_DECISION_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    UNCACHEABLE_FIELD_NUMBER: _ClassVar[int]
    outcome: LookupOutcome
    answer: CachedAnswer
    semantic_decision: SemanticDecision
    similarity: float
    uncacheable: bool
    def __init__(self, outcome: _Optional[_Union[LookupOutcome, str]] = ..., answer: _Optional[_Union[CachedAnswer, _Mapping]] = ..., semantic_decision: _Optional[_Union[SemanticDecision, str]] = ..., similarity: _Optional[float] = ..., uncacheable: _Optional[bool] = ...) -> None: ...

class StoreRequest(_message.Message):
    __slots__ = ("key", "content", "model", "backend", "tier", "usage", "cost_usd", "ttl_seconds", "content_versions", "content_class", "business_unit", "exact_only")
    KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_CLASS_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_UNIT_FIELD_NUMBER: _ClassVar[int]
    EXACT_ONLY_FIELD_NUMBER: _ClassVar[int]
    key: CacheKey
    content: str
    model: str
    backend: str
    tier: _common_pb2.Tier
    usage: _common_pb2.Usage
    cost_usd: float
    ttl_seconds: int
    content_versions: _containers.RepeatedCompositeFieldContainer[_common_pb2.ContentVersion]
    content_class: str
    business_unit: str
    exact_only: bool
    def __init__(self, key: _Optional[_Union[CacheKey, _Mapping]] = ..., content: _Optional[str] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., ttl_seconds: _Optional[int] = ..., content_versions: _Optional[_Iterable[_Union[_common_pb2.ContentVersion, _Mapping]]] = ..., content_class: _Optional[str] = ..., business_unit: _Optional[str] = ..., exact_only: _Optional[bool] = ...) -> None: ...

class StoreResponse(_message.Message):
    __slots__ = ("entry_id", "stored", "reason", "expires_at", "semantic_indexed")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_INDEXED_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    stored: bool
    reason: str
    expires_at: _timestamp_pb2.Timestamp
    semantic_indexed: bool
    def __init__(self, entry_id: _Optional[str] = ..., stored: _Optional[bool] = ..., reason: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., semantic_indexed: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("event_id", "pending")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    pending: bool
    def __init__(self, event_id: _Optional[str] = ..., pending: _Optional[bool] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("tenant_id", "entry_id", "rating", "served_as", "use_case", "business_unit")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    SERVED_AS_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_UNIT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    entry_id: str
    rating: Rating
    served_as: LookupOutcome
    use_case: str
    business_unit: str
    def __init__(self, tenant_id: _Optional[str] = ..., entry_id: _Optional[str] = ..., rating: _Optional[_Union[Rating, str]] = ..., served_as: _Optional[_Union[LookupOutcome, str]] = ..., use_case: _Optional[str] = ..., business_unit: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("evicted", "tightened")
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    TIGHTENED_FIELD_NUMBER: _ClassVar[int]
    evicted: bool
    tightened: bool
    def __init__(self, evicted: _Optional[bool] = ..., tightened: _Optional[bool] = ...) -> None: ...

class PinEntryRequest(_message.Message):
    __slots__ = ("tenant_id", "entry_id", "pinned")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    entry_id: str
    pinned: bool
    def __init__(self, tenant_id: _Optional[str] = ..., entry_id: _Optional[str] = ..., pinned: _Optional[bool] = ...) -> None: ...

class PinEntryResponse(_message.Message):
    __slots__ = ("answer",)
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    answer: CachedAnswer
    def __init__(self, answer: _Optional[_Union[CachedAnswer, _Mapping]] = ...) -> None: ...

class DeleteEntryRequest(_message.Message):
    __slots__ = ("tenant_id", "entry_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    entry_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., entry_id: _Optional[str] = ...) -> None: ...

class DeleteEntryResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class WarmRequest(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: StoreRequest
    def __init__(self, entry: _Optional[_Union[StoreRequest, _Mapping]] = ...) -> None: ...

class WarmResponse(_message.Message):
    __slots__ = ("received", "stored", "skipped", "failed", "last_error", "done")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    received: int
    stored: int
    skipped: int
    failed: int
    last_error: str
    done: bool
    def __init__(self, received: _Optional[int] = ..., stored: _Optional[int] = ..., skipped: _Optional[int] = ..., failed: _Optional[int] = ..., last_error: _Optional[str] = ..., done: _Optional[bool] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("tenant_id", "business_unit", "use_case")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_UNIT_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    business_unit: str
    use_case: str
    def __init__(self, tenant_id: _Optional[str] = ..., business_unit: _Optional[str] = ..., use_case: _Optional[str] = ...) -> None: ...

class CacheStats(_message.Message):
    __slots__ = ("tenant_id", "business_unit", "use_case", "lookups", "exact_hits", "semantic_hits", "gray_zone", "misses", "uncacheable", "hit_rate", "exact_hit_rate", "semantic_hit_rate", "gray_zone_rate", "tokens_saved", "cost_saved_usd", "thumbs_up", "thumbs_down")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_UNIT_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    EXACT_HITS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_HITS_FIELD_NUMBER: _ClassVar[int]
    GRAY_ZONE_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    UNCACHEABLE_FIELD_NUMBER: _ClassVar[int]
    HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    EXACT_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    GRAY_ZONE_RATE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SAVED_FIELD_NUMBER: _ClassVar[int]
    COST_SAVED_USD_FIELD_NUMBER: _ClassVar[int]
    THUMBS_UP_FIELD_NUMBER: _ClassVar[int]
    THUMBS_DOWN_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    business_unit: str
    use_case: str
    lookups: int
    exact_hits: int
    semantic_hits: int
    gray_zone: int
    misses: int
    uncacheable: int
    hit_rate: float
    exact_hit_rate: float
    semantic_hit_rate: float
    gray_zone_rate: float
    tokens_saved: int
    cost_saved_usd: float
    thumbs_up: int
    thumbs_down: int
    def __init__(self, tenant_id: _Optional[str] = ..., business_unit: _Optional[str] = ..., use_case: _Optional[str] = ..., lookups: _Optional[int] = ..., exact_hits: _Optional[int] = ..., semantic_hits: _Optional[int] = ..., gray_zone: _Optional[int] = ..., misses: _Optional[int] = ..., uncacheable: _Optional[int] = ..., hit_rate: _Optional[float] = ..., exact_hit_rate: _Optional[float] = ..., semantic_hit_rate: _Optional[float] = ..., gray_zone_rate: _Optional[float] = ..., tokens_saved: _Optional[int] = ..., cost_saved_usd: _Optional[float] = ..., thumbs_up: _Optional[int] = ..., thumbs_down: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("rows", "total")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[CacheStats]
    total: CacheStats
    def __init__(self, rows: _Optional[_Iterable[_Union[CacheStats, _Mapping]]] = ..., total: _Optional[_Union[CacheStats, _Mapping]] = ...) -> None: ...

class ListHotEntriesRequest(_message.Message):
    __slots__ = ("tenant_id", "use_case", "min_hits", "expiring_within_seconds", "limit")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    MIN_HITS_FIELD_NUMBER: _ClassVar[int]
    EXPIRING_WITHIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    use_case: str
    min_hits: int
    expiring_within_seconds: float
    limit: int
    def __init__(self, tenant_id: _Optional[str] = ..., use_case: _Optional[str] = ..., min_hits: _Optional[int] = ..., expiring_within_seconds: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class HotEntry(_message.Message):
    __slots__ = ("key", "answer", "hits", "last_hit_at")
    KEY_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    LAST_HIT_AT_FIELD_NUMBER: _ClassVar[int]
    key: CacheKey
    answer: CachedAnswer
    hits: int
    last_hit_at: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[_Union[CacheKey, _Mapping]] = ..., answer: _Optional[_Union[CachedAnswer, _Mapping]] = ..., hits: _Optional[int] = ..., last_hit_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListHotEntriesResponse(_message.Message):
    __slots__ = ("entries", "hits_by_hour")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HITS_BY_HOUR_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[HotEntry]
    hits_by_hour: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, entries: _Optional[_Iterable[_Union[HotEntry, _Mapping]]] = ..., hits_by_hour: _Optional[_Iterable[int]] = ...) -> None: ...
