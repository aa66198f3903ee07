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
