from llmesh.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PiiKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PII_KIND_UNSPECIFIED: _ClassVar[PiiKind]
    PII_KIND_EMAIL: _ClassVar[PiiKind]
    PII_KIND_PHONE: _ClassVar[PiiKind]
    PII_KIND_PAYMENT_CARD: _ClassVar[PiiKind]
    PII_KIND_IBAN: _ClassVar[PiiKind]
    PII_KIND_NATIONAL_ID: _ClassVar[PiiKind]
    PII_KIND_SECRET: _ClassVar[PiiKind]
    PII_KIND_TENANT_TERM: _ClassVar[PiiKind]
PII_KIND_UNSPECIFIED: PiiKind
PII_KIND_EMAIL: PiiKind
PII_KIND_PHONE: PiiKind
PII_KIND_PAYMENT_CARD: PiiKind
PII_KIND_IBAN: PiiKind
PII_KIND_NATIONAL_ID: PiiKind
PII_KIND_SECRET: PiiKind
PII_KIND_TENANT_TERM: PiiKind

class ClassifyRequest(_message.Message):
    __slots__ = ("messages", "tenant_id", "use_case", "request_id")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    USE_CASE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChatMessage]
    tenant_id: str
    use_case: str
    request_id: str
    def __init__(self, messages: _Optional[_Iterable[_Union[_common_pb2.ChatMessage, _Mapping]]] = ..., tenant_id: _Optional[str] = ..., use_case: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class PiiSpan(_message.Message):
    __slots__ = ("kind", "message_index", "start", "end", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: PiiKind
    message_index: int
    start: int
    end: int
    detail: str
    def __init__(self, kind: _Optional[_Union[PiiKind, str]] = ..., message_index: _Optional[int] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("complexity_score", "tier", "confidence", "sensitivity", "pii", "model_name", "model_version")
    COMPLEXITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    PII_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    complexity_score: float
    tier: _common_pb2.Tier
    confidence: float
    sensitivity: _common_pb2.Sensitivity
    pii: _containers.RepeatedCompositeFieldContainer[PiiSpan]
    model_name: str
    model_version: str
    def __init__(self, complexity_score: _Optional[float] = ..., tier: _Optional[_Union[_common_pb2.Tier, str]] = ..., confidence: _Optional[float] = ..., sensitivity: _Optional[_Union[_common_pb2.Sensitivity, str]] = ..., pii: _Optional[_Iterable[_Union[PiiSpan, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "rating", "comment", "tenant_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    rating: int
    comment: str
    tenant_id: str
    def __init__(self, request_id: _Optional[str] = ..., rating: _Optional[int] = ..., comment: _Optional[str] = ..., tenant_id: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
