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

class CacheEntryRemoved(_message.Message):
    __slots__ = ("event_id", "tenant_id", "entry_id", "reason", "removed_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REMOVED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    tenant_id: str
    entry_id: str
    reason: str
    removed_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., entry_id: _Optional[str] = ..., reason: _Optional[str] = ..., removed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CacheHitsReported(_message.Message):
    __slots__ = ("event_id", "router_replica", "hits", "observed_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTER_REPLICA_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    router_replica: str
    hits: _containers.RepeatedCompositeFieldContainer[CacheHitCount]
    observed_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., router_replica: _Optional[str] = ..., hits: _Optional[_Iterable[_Union[CacheHitCount, _Mapping]]] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CacheHitCount(_message.Message):
    __slots__ = ("tenant_id", "business_unit", "use_case", "entry_id", "hits", "tokens", "cost_usd", "last_hit_at")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_UNIT_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    LAST_HIT_AT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    business_unit: str
    use_case: str
    entry_id: str
    hits: int
    tokens: int
    cost_usd: float
    last_hit_at: _timestamp_pb2.Timestamp
    def __init__(self, tenant_id: _Optional[str] = ..., business_unit: _Optional[str] = ..., use_case: _Optional[str] = ..., entry_id: _Optional[str] = ..., hits: _Optional[int] = ..., tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., last_hit_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("event_id", "model", "region", "backend", "utilization", "active", "queued", "capacity", "max_queue", "time_to_first_token_p50_ms", "time_to_first_token_p95_ms", "tokens_per_second_p50", "window_s", "observed_at", "crossed_percent", "instance")
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
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
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
    instance: str
    def __init__(self, event_id: _Optional[str] = ..., model: _Optional[str] = ..., region: _Optional[str] = ..., backend: _Optional[str] = ..., utilization: _Optional[float] = ..., active: _Optional[int] = ..., queued: _Optional[int] = ..., capacity: _Optional[int] = ..., max_queue: _Optional[int] = ..., time_to_first_token_p50_ms: _Optional[float] = ..., time_to_first_token_p95_ms: _Optional[float] = ..., tokens_per_second_p50: _Optional[float] = ..., window_s: _Optional[float] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., crossed_percent: _Optional[int] = ..., instance: _Optional[str] = ...) -> None: ...

class BreakerStateChanged(_message.Message):
    __slots__ = ("event_id", "router_replica", "region", "model", "endpoint", "state", "previous_state", "reason", "ejection_count", "ejected_until", "observed_at")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[BreakerStateChanged.State]
        STATE_CLOSED: _ClassVar[BreakerStateChanged.State]
        STATE_OPEN: _ClassVar[BreakerStateChanged.State]
        STATE_HALF_OPEN: _ClassVar[BreakerStateChanged.State]
    STATE_UNSPECIFIED: BreakerStateChanged.State
    STATE_CLOSED: BreakerStateChanged.State
    STATE_OPEN: BreakerStateChanged.State
    STATE_HALF_OPEN: BreakerStateChanged.State
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTER_REPLICA_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EJECTION_COUNT_FIELD_NUMBER: _ClassVar[int]
    EJECTED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    router_replica: str
    region: str
    model: str
    endpoint: str
    state: BreakerStateChanged.State
    previous_state: BreakerStateChanged.State
    reason: str
    ejection_count: int
    ejected_until: _timestamp_pb2.Timestamp
    observed_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., router_replica: _Optional[str] = ..., region: _Optional[str] = ..., model: _Optional[str] = ..., endpoint: _Optional[str] = ..., state: _Optional[_Union[BreakerStateChanged.State, str]] = ..., previous_state: _Optional[_Union[BreakerStateChanged.State, str]] = ..., reason: _Optional[str] = ..., ejection_count: _Optional[int] = ..., ejected_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UsageRecorded(_message.Message):
    __slots__ = ("request_id", "tenant_id", "business_unit", "use_case", "key_id", "model", "tier", "backend", "region", "cache_outcome", "usage", "cost_usd", "cost_avoided_usd", "occurred_at", "priority", "policy_variant", "error_code", "time_to_first_token_ms", "total_time_ms", "escalated")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BUSINESS_UNIT_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CACHE_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    COST_AVOIDED_USD_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VARIANT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant_id: str
    business_unit: str
    use_case: str
    key_id: str
    model: str
    tier: _common_pb2.Tier
    backend: str
    region: str
    cache_outcome: str
    usage: _common_pb2.Usage
    cost_usd: float
    cost_avoided_usd: float
    occurred_at: _timestamp_pb2.Timestamp
    priority: str
    policy_variant: str
    error_code: str
    time_to_first_token_ms: float
    total_time_ms: float
    escalated: bool
    def __init__(self, request_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., business_unit: _Optional[str] = ..., use_case: _Optional[str] = ..., key_id: _Optional[str] = ..., model: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., backend: _Optional[str] = ..., region: _Optional[str] = ..., cache_outcome: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., cost_avoided_usd: _Optional[float] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., priority: _Optional[str] = ..., policy_variant: _Optional[str] = ..., error_code: _Optional[str] = ..., time_to_first_token_ms: _Optional[float] = ..., total_time_ms: _Optional[float] = ..., escalated: _Optional[bool] = ...) -> None: ...

class UsageRecordedBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[UsageRecorded]
    def __init__(self, records: _Optional[_Iterable[_Union[UsageRecorded, _Mapping]]] = ...) -> None: ...

class BudgetAlert(_message.Message):
    __slots__ = ("event_id", "tenant_id", "budget", "scope", "scope_value", "period", "period_start", "unit", "limit", "spent", "threshold_percent", "hard", "observed_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_VALUE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    tenant_id: str
    budget: str
    scope: str
    scope_value: str
    period: str
    period_start: _timestamp_pb2.Timestamp
    unit: str
    limit: float
    spent: float
    threshold_percent: int
    hard: bool
    observed_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., budget: _Optional[str] = ..., scope: _Optional[str] = ..., scope_value: _Optional[str] = ..., period: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unit: _Optional[str] = ..., limit: _Optional[float] = ..., spent: _Optional[float] = ..., threshold_percent: _Optional[int] = ..., hard: _Optional[bool] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RegionHealth(_message.Message):
    __slots__ = ("region", "router_replica", "models", "observed_at")
    REGION_FIELD_NUMBER: _ClassVar[int]
    ROUTER_REPLICA_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    region: str
    router_replica: str
    models: _containers.RepeatedCompositeFieldContainer[ModelHealth]
    observed_at: _timestamp_pb2.Timestamp
    def __init__(self, region: _Optional[str] = ..., router_replica: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelHealth, _Mapping]]] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ModelHealth(_message.Message):
    __slots__ = ("model", "tier", "error_rate", "time_to_first_token_p95_ms", "utilization", "breaker_state", "requests_in_window")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_P95_MS_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_IN_WINDOW_FIELD_NUMBER: _ClassVar[int]
    model: str
    tier: _common_pb2.Tier
    error_rate: float
    time_to_first_token_p95_ms: float
    utilization: float
    breaker_state: BreakerStateChanged.State
    requests_in_window: int
    def __init__(self, model: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., error_rate: _Optional[float] = ..., time_to_first_token_p95_ms: _Optional[float] = ..., utilization: _Optional[float] = ..., breaker_state: _Optional[_Union[BreakerStateChanged.State, str]] = ..., requests_in_window: _Optional[int] = ...) -> None: ...

class ClassifierRolloutChanged(_message.Message):
    __slots__ = ("event_id", "current_version", "candidate_version", "decision", "share", "current_apgr", "candidate_apgr", "difference_low", "difference_high", "labelled", "reason", "occurred_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_APGR_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_APGR_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_LOW_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_HIGH_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    current_version: str
    candidate_version: str
    decision: str
    share: float
    current_apgr: float
    candidate_apgr: float
    difference_low: float
    difference_high: float
    labelled: int
    reason: str
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., current_version: _Optional[str] = ..., candidate_version: _Optional[str] = ..., decision: _Optional[str] = ..., share: _Optional[float] = ..., current_apgr: _Optional[float] = ..., candidate_apgr: _Optional[float] = ..., difference_low: _Optional[float] = ..., difference_high: _Optional[float] = ..., labelled: _Optional[int] = ..., reason: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ClassifierModelLoaded(_message.Message):
    __slots__ = ("event_id", "version", "occurred_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    version: str
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., version: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RoutingOutcome(_message.Message):
    __slots__ = ("request_id", "tenant_id", "use_case", "region", "verdict", "classified_tier", "answered_tier", "first_model", "answered_model", "quality_score", "threshold", "sample_rate", "occurred_at")
    class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        VERDICT_UNSPECIFIED: _ClassVar[RoutingOutcome.Verdict]
        VERDICT_ESCALATED: _ClassVar[RoutingOutcome.Verdict]
        VERDICT_PASSED: _ClassVar[RoutingOutcome.Verdict]
        VERDICT_FAILED_KEPT: _ClassVar[RoutingOutcome.Verdict]
    VERDICT_UNSPECIFIED: RoutingOutcome.Verdict
    VERDICT_ESCALATED: RoutingOutcome.Verdict
    VERDICT_PASSED: RoutingOutcome.Verdict
    VERDICT_FAILED_KEPT: RoutingOutcome.Verdict
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIED_TIER_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_TIER_FIELD_NUMBER: _ClassVar[int]
    FIRST_MODEL_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_MODEL_FIELD_NUMBER: _ClassVar[int]
    QUALITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tenant_id: str
    use_case: str
    region: str
    verdict: RoutingOutcome.Verdict
    classified_tier: _common_pb2.Tier
    answered_tier: _common_pb2.Tier
    first_model: str
    answered_model: str
    quality_score: float
    threshold: float
    sample_rate: float
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., use_case: _Optional[str] = ..., region: _Optional[str] = ..., verdict: _Optional[_Union[RoutingOutcome.Verdict, str]] = ..., classified_tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., answered_tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., first_model: _Optional[str] = ..., answered_model: _Optional[str] = ..., quality_score: _Optional[float] = ..., threshold: _Optional[float] = ..., sample_rate: _Optional[float] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuditRecorded(_message.Message):
    __slots__ = ("event_id", "source", "action", "tenant_id", "target", "detail_json", "occurred_at")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DETAIL_JSON_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    source: str
    action: str
    tenant_id: str
    target: str
    detail_json: str
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, event_id: _Optional[str] = ..., source: _Optional[str] = ..., action: _Optional[str] = ..., tenant_id: _Optional[str] = ..., target: _Optional[str] = ..., detail_json: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LoadSample(_message.Message):
    __slots__ = ("event_id", "service", "instance", "window_start", "window_s", "requests_per_second")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    service: str
    instance: str
    window_start: _timestamp_pb2.Timestamp
    window_s: float
    requests_per_second: float
    def __init__(self, event_id: _Optional[str] = ..., service: _Optional[str] = ..., instance: _Optional[str] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_s: _Optional[float] = ..., requests_per_second: _Optional[float] = ...) -> None: ...
