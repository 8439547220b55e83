from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class StreamEventsRequest(_message.Message):
    __slots__ = ("after_seq", "follow")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    follow: bool
    def __init__(self, after_seq: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class DomainEvent(_message.Message):
    __slots__ = ("seq", "event_id", "event_type", "workflow_id", "workflow_seq", "correlation_id", "payload", "time_ms")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_SEQ_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    event_id: str
    event_type: str
    workflow_id: str
    workflow_seq: int
    correlation_id: str
    payload: str
    time_ms: int
    def __init__(self, seq: _Optional[int] = ..., event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., workflow_id: _Optional[str] = ..., workflow_seq: _Optional[int] = ..., correlation_id: _Optional[str] = ..., payload: _Optional[str] = ..., time_ms: _Optional[int] = ...) -> None: ...
