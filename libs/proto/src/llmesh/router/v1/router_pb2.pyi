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

class CachePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CACHE_POLICY_UNSPECIFIED: _ClassVar[CachePolicy]
    CACHE_POLICY_ALLOW: _ClassVar[CachePolicy]
    CACHE_POLICY_BYPASS: _ClassVar[CachePolicy]

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
CACHE_POLICY_UNSPECIFIED: CachePolicy
CACHE_POLICY_ALLOW: CachePolicy
CACHE_POLICY_BYPASS: CachePolicy
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
    __slots__ = ("request_id", "tier", "model", "backend", "cache_outcome", "usage", "cost_usd", "time_to_first_token_ms", "total_time_ms", "finish_reason")
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
    def __init__(self, request_id: _Optional[str] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., cache_outcome: _Optional[_Union[CacheOutcome, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., cost_usd: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ..., total_time_ms: _Optional[float] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("delta", "summary")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    delta: str
    summary: GenerateSummary
    def __init__(self, delta: _Optional[str] = ..., summary: _Optional[_Union[GenerateSummary, _Mapping]] = ...) -> None: ...
