from llmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_INTERACTIVE: _ClassVar[Priority]
    PRIORITY_BATCH: _ClassVar[Priority]
    PRIORITY_STANDARD: _ClassVar[Priority]

class CachePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_POLICY_UNSPECIFIED: _ClassVar[CachePolicy]
    CACHE_POLICY_ALLOW: _ClassVar[CachePolicy]
    CACHE_POLICY_BYPASS: _ClassVar[CachePolicy]
    CACHE_POLICY_REFRESH: _ClassVar[CachePolicy]

class CacheOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_OUTCOME_UNSPECIFIED: _ClassVar[CacheOutcome]
    CACHE_OUTCOME_MISS: _ClassVar[CacheOutcome]
    CACHE_OUTCOME_EXACT_HIT: _ClassVar[CacheOutcome]
    CACHE_OUTCOME_SEMANTIC_HIT: _ClassVar[CacheOutcome]
    CACHE_OUTCOME_BYPASSED: _ClassVar[CacheOutcome]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_INTERACTIVE: Priority
PRIORITY_BATCH: Priority
PRIORITY_STANDARD: Priority
CACHE_POLICY_UNSPECIFIED: CachePolicy
CACHE_POLICY_ALLOW: CachePolicy
CACHE_POLICY_BYPASS: CachePolicy
CACHE_POLICY_REFRESH: CachePolicy
CACHE_OUTCOME_UNSPECIFIED: CacheOutcome
CACHE_OUTCOME_MISS: CacheOutcome
CACHE_OUTCOME_EXACT_HIT: CacheOutcome
CACHE_OUTCOME_SEMANTIC_HIT: CacheOutcome
CACHE_OUTCOME_BYPASSED: CacheOutcome

class GenerateRequest(_message.Message):
    __slots__ = ("messages", "max_tokens", "sampling", "use_case", "priority", "cache_policy", "model")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CACHE_POLICY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    max_tokens: int
    sampling: _common_pb2.SamplingParams
    use_case: str
    priority: Priority
    cache_policy: CachePolicy
    model: str
    def __init__(self, messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., use_case: _Optional[str] = ..., priority: _Optional[_Union[Priority, str]] = ..., cache_policy: _Optional[_Union[CachePolicy, str]] = ..., model: _Optional[str] = ...) -> None: ...

class GenerateSummary(_message.Message):
    __slots__ = ("request_id", "tier", "model", "backend", "cache_outcome", "usage", "cost_usd", "time_to_first_token_ms", "total_time_ms", "finish_reason", "attempts", "overflow", "escalation", "region", "policy_variant", "queue_wait_ms", "priority")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CACHE_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VARIANT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tier: _common_pb2.Tier
    model: str
    backend: str
    cache_outcome: CacheOutcome
    usage: _common_pb2.Usage
    cost_usd: float
    time_to_first_token_ms: float
    total_time_ms: float
    finish_reason: _common_pb2.FinishReason
    attempts: _containers.RepeatedCompositeFieldContainer[RouteAttempt]
    overflow: Overflow
    escalation: Escalation
    region: str
    policy_variant: str
    queue_wait_ms: float
    priority: Priority
    def __init__(self, request_id: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., cache_outcome: _Optional[_Union[CacheOutcome, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ..., total_time_ms: _Optional[float] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., attempts: _Optional[_Iterable[_Union[RouteAttempt, _Mapping]]] = ..., overflow: _Optional[_Union[Overflow, _Mapping]] = ..., escalation: _Optional[_Union[Escalation, _Mapping]] = ..., region: _Optional[str] = ..., policy_variant: _Optional[str] = ..., queue_wait_ms: _Optional[float] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class RouteAttempt(_message.Message):
    __slots__ = ("model", "backend", "region", "outcome", "reason", "elapsed_ms", "after_first_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend: str
    region: str
    outcome: str
    reason: str
    elapsed_ms: float
    after_first_token: bool
    def __init__(self, model: _Optional[str] = ..., backend: _Optional[str] = ..., region: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., elapsed_ms: _Optional[float] = ..., after_first_token: _Optional[bool] = ...) -> None: ...

class Overflow(_message.Message):
    __slots__ = ("reason", "utilization", "extra_cost_usd")
    REASON_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    EXTRA_COST_USD_FIELD_NUMBER: _ClassVar[int]
    reason: str
    utilization: float
    extra_cost_usd: float
    def __init__(self, reason: _Optional[str] = ..., utilization: _Optional[float] = ..., extra_cost_usd: _Optional[float] = ...) -> None: ...

class Escalation(_message.Message):
    __slots__ = ("from_tier", "from_model", "quality_score", "threshold", "first_answer_cost_usd")
    FROM_TIER_FIELD_NUMBER: _ClassVar[int]
    FROM_MODEL_FIELD_NUMBER: _ClassVar[int]
    QUALITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FIRST_ANSWER_COST_USD_FIELD_NUMBER: _ClassVar[int]
    from_tier: _common_pb2.Tier
    from_model: str
    quality_score: float
    threshold: float
    first_answer_cost_usd: float
    def __init__(self, from_tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., from_model: _Optional[str] = ..., quality_score: _Optional[float] = ..., threshold: _Optional[float] = ..., first_answer_cost_usd: _Optional[float] = ...) -> None: ...

class StreamInterrupted(_message.Message):
    __slots__ = ("request_id", "model", "usage", "cost_usd", "delivered_chars")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_CHARS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    usage: _common_pb2.Usage
    cost_usd: float
    delivered_chars: int
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., delivered_chars: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("delta", "summary")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    delta: str
    summary: GenerateSummary
    def __init__(self, delta: _Optional[str] = ..., summary: _Optional[_Union[GenerateSummary, _Mapping]] = ...) -> None: ...
