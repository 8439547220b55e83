from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkerMessage(_message.Message):
    __slots__ = ("register", "credit", "outcome", "heartbeat", "withdraw")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    WITHDRAW_FIELD_NUMBER: _ClassVar[int]
    register: Register
    credit: Credit
    outcome: TaskOutcome
    heartbeat: Heartbeat
    withdraw: Withdraw
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., outcome: _Optional[_Union[TaskOutcome, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., withdraw: _Optional[_Union[Withdraw, _Mapping]] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("worker_id", "activity_types", "held")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_TYPES_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    activity_types: _containers.RepeatedScalarFieldContainer[str]
    held: _containers.RepeatedCompositeFieldContainer[TaskRef]
    def __init__(self, worker_id: _Optional[str] = ..., activity_types: _Optional[_Iterable[str]] = ..., held: _Optional[_Iterable[_Union[TaskRef, _Mapping]]] = ...) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("workflow_id", "task_id", "lease_token")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    lease_token: str
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., lease_token: _Optional[str] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: int
    def __init__(self, tasks: _Optional[int] = ...) -> None: ...

class Withdraw(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: int
    def __init__(self, tasks: _Optional[int] = ...) -> None: ...

class TaskOutcome(_message.Message):
    __slots__ = ("workflow_id", "task_id", "completed", "failed", "lease_token")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    completed: str
    failed: TaskFailure
    lease_token: str
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., completed: _Optional[str] = ..., failed: _Optional[_Union[TaskFailure, _Mapping]] = ..., lease_token: _Optional[str] = ...) -> None: ...

class TaskFailure(_message.Message):
    __slots__ = ("error_type", "message", "retryable")
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    error_type: str
    message: str
    retryable: bool
    def __init__(self, error_type: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("workflow_id", "task_id", "details", "lease_token")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    details: str
    lease_token: str
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., details: _Optional[str] = ..., lease_token: _Optional[str] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("registered", "task", "ack", "task_cancelled", "withdrawn")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    TASK_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    task: ActivityTask
    ack: OutcomeAck
    task_cancelled: TaskCancelled
    withdrawn: Withdrawn
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., task: _Optional[_Union[ActivityTask, _Mapping]] = ..., ack: _Optional[_Union[OutcomeAck, _Mapping]] = ..., task_cancelled: _Optional[_Union[TaskCancelled, _Mapping]] = ..., withdrawn: _Optional[_Union[Withdrawn, _Mapping]] = ...) -> None: ...

class Withdrawn(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: int
    def __init__(self, tasks: _Optional[int] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("session_id", "max_result_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    max_result_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., max_result_bytes: _Optional[int] = ...) -> None: ...

class ActivityTask(_message.Message):
    __slots__ = ("workflow_id", "task_id", "workflow_type", "activity_type", "step", "attempt", "compensation", "input", "idempotency_key", "correlation_id", "traceparent", "start_to_close_ms", "heartbeat_ms", "lease_token")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_TYPE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    START_TO_CLOSE_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    workflow_type: str
    activity_type: str
    step: str
    attempt: int
    compensation: bool
    input: str
    idempotency_key: str
    correlation_id: str
    traceparent: str
    start_to_close_ms: int
    heartbeat_ms: int
    lease_token: str
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., workflow_type: _Optional[str] = ..., activity_type: _Optional[str] = ..., step: _Optional[str] = ..., attempt: _Optional[int] = ..., compensation: _Optional[bool] = ..., input: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., correlation_id: _Optional[str] = ..., traceparent: _Optional[str] = ..., start_to_close_ms: _Optional[int] = ..., heartbeat_ms: _Optional[int] = ..., lease_token: _Optional[str] = ...) -> None: ...

class OutcomeAck(_message.Message):
    __slots__ = ("workflow_id", "task_id", "accepted", "refused")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    accepted: bool
    refused: str
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., accepted: _Optional[bool] = ..., refused: _Optional[str] = ...) -> None: ...

class TaskCancelled(_message.Message):
    __slots__ = ("workflow_id", "task_id", "reason")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    task_id: str
    reason: str
    def __init__(self, workflow_id: _Optional[str] = ..., task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
