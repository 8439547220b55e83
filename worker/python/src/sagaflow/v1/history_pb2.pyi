from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HistoryEvent(_message.Message):
    __slots__ = ("seq", "time_ms", "workflow_started", "activity_scheduled", "activity_started", "activity_completed", "activity_failed", "activity_timed_out", "timer_started", "timer_fired", "signal_received", "cancel_requested", "compensation_started", "workflow_completed", "workflow_compensated", "workflow_failed", "workflow_cancelled", "workflow_terminated", "stuck_detected", "stuck_cleared", "step_escalated", "completion_ignored", "cancel_refused", "activity_resolved", "step_skipped", "workflow_paused", "workflow_resumed", "workflow_held")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_STARTED_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_SCHEDULED_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_STARTED_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FAILED_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    TIMER_STARTED_FIELD_NUMBER: _ClassVar[int]
    TIMER_FIRED_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_STARTED_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_COMPENSATED_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FAILED_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_CANCELLED_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TERMINATED_FIELD_NUMBER: _ClassVar[int]
    STUCK_DETECTED_FIELD_NUMBER: _ClassVar[int]
    STUCK_CLEARED_FIELD_NUMBER: _ClassVar[int]
    STEP_ESCALATED_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_IGNORED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REFUSED_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    STEP_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_PAUSED_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_RESUMED_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_HELD_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time_ms: int
    workflow_started: WorkflowStarted
    activity_scheduled: ActivityScheduled
    activity_started: ActivityStarted
    activity_completed: ActivityCompleted
    activity_failed: ActivityFailed
    activity_timed_out: ActivityTimedOut
    timer_started: TimerStarted
    timer_fired: TimerFired
    signal_received: SignalReceived
    cancel_requested: CancelRequested
    compensation_started: CompensationStarted
    workflow_completed: WorkflowCompleted
    workflow_compensated: WorkflowCompensated
    workflow_failed: WorkflowFailed
    workflow_cancelled: WorkflowCancelled
    workflow_terminated: WorkflowTerminated
    stuck_detected: StuckDetected
    stuck_cleared: StuckCleared
    step_escalated: StepEscalated
    completion_ignored: CompletionIgnored
    cancel_refused: CancelRefused
    activity_resolved: ActivityResolved
    step_skipped: StepSkipped
    workflow_paused: WorkflowPaused
    workflow_resumed: WorkflowResumed
    workflow_held: WorkflowHeld
    def __init__(self, seq: _Optional[int] = ..., time_ms: _Optional[int] = ..., workflow_started: _Optional[_Union[WorkflowStarted, _Mapping]] = ..., activity_scheduled: _Optional[_Union[ActivityScheduled, _Mapping]] = ..., activity_started: _Optional[_Union[ActivityStarted, _Mapping]] = ..., activity_completed: _Optional[_Union[ActivityCompleted, _Mapping]] = ..., activity_failed: _Optional[_Union[ActivityFailed, _Mapping]] = ..., activity_timed_out: _Optional[_Union[ActivityTimedOut, _Mapping]] = ..., timer_started: _Optional[_Union[TimerStarted, _Mapping]] = ..., timer_fired: _Optional[_Union[TimerFired, _Mapping]] = ..., signal_received: _Optional[_Union[SignalReceived, _Mapping]] = ..., cancel_requested: _Optional[_Union[CancelRequested, _Mapping]] = ..., compensation_started: _Optional[_Union[CompensationStarted, _Mapping]] = ..., workflow_completed: _Optional[_Union[WorkflowCompleted, _Mapping]] = ..., workflow_compensated: _Optional[_Union[WorkflowCompensated, _Mapping]] = ..., workflow_failed: _Optional[_Union[WorkflowFailed, _Mapping]] = ..., workflow_cancelled: _Optional[_Union[WorkflowCancelled, _Mapping]] = ..., workflow_terminated: _Optional[_Union[WorkflowTerminated, _Mapping]] = ..., stuck_detected: _Optional[_Union[StuckDetected, _Mapping]] = ..., stuck_cleared: _Optional[_Union[StuckCleared, _Mapping]] = ..., step_escalated: _Optional[_Union[StepEscalated, _Mapping]] = ..., completion_ignored: _Optional[_Union[CompletionIgnored, _Mapping]] = ..., cancel_refused: _Optional[_Union[CancelRefused, _Mapping]] = ..., activity_resolved: _Optional[_Union[ActivityResolved, _Mapping]] = ..., step_skipped: _Optional[_Union[StepSkipped, _Mapping]] = ..., workflow_paused: _Optional[_Union[WorkflowPaused, _Mapping]] = ..., workflow_resumed: _Optional[_Union[WorkflowResumed, _Mapping]] = ..., workflow_held: _Optional[_Union[WorkflowHeld, _Mapping]] = ...) -> None: ...

class WorkflowStarted(_message.Message):
    __slots__ = ("workflow_type", "definition_version", "request_id", "input", "labels", "correlation_id", "traceparent", "definition_hash", "parent_workflow_id", "redrive_of", "redrive", "carried_steps")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_HASH_FIELD_NUMBER: _ClassVar[int]
    PARENT_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    REDRIVE_OF_FIELD_NUMBER: _ClassVar[int]
    REDRIVE_FIELD_NUMBER: _ClassVar[int]
    CARRIED_STEPS_FIELD_NUMBER: _ClassVar[int]
    workflow_type: str
    definition_version: int
    request_id: str
    input: str
    labels: _containers.ScalarMap[str, str]
    correlation_id: str
    traceparent: str
    definition_hash: str
    parent_workflow_id: str
    redrive_of: str
    redrive: int
    carried_steps: _containers.RepeatedCompositeFieldContainer[CarriedStep]
    def __init__(self, workflow_type: _Optional[str] = ..., definition_version: _Optional[int] = ..., request_id: _Optional[str] = ..., input: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., correlation_id: _Optional[str] = ..., traceparent: _Optional[str] = ..., definition_hash: _Optional[str] = ..., parent_workflow_id: _Optional[str] = ..., redrive_of: _Optional[str] = ..., redrive: _Optional[int] = ..., carried_steps: _Optional[_Iterable[_Union[CarriedStep, _Mapping]]] = ...) -> None: ...

class CarriedStep(_message.Message):
    __slots__ = ("step_index", "step", "result", "skipped")
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    step_index: int
    step: str
    result: str
    skipped: bool
    def __init__(self, step_index: _Optional[int] = ..., step: _Optional[str] = ..., result: _Optional[str] = ..., skipped: _Optional[bool] = ...) -> None: ...

class ActivityScheduled(_message.Message):
    __slots__ = ("task_id", "step_index", "step", "activity_type", "attempt", "compensation", "input", "idempotency_key")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    step_index: int
    step: str
    activity_type: str
    attempt: int
    compensation: bool
    input: str
    idempotency_key: str
    def __init__(self, task_id: _Optional[str] = ..., step_index: _Optional[int] = ..., step: _Optional[str] = ..., activity_type: _Optional[str] = ..., attempt: _Optional[int] = ..., compensation: _Optional[bool] = ..., input: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class ActivityStarted(_message.Message):
    __slots__ = ("task_id", "worker_id", "started_ms")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    worker_id: str
    started_ms: int
    def __init__(self, task_id: _Optional[str] = ..., worker_id: _Optional[str] = ..., started_ms: _Optional[int] = ...) -> None: ...

class ActivityCompleted(_message.Message):
    __slots__ = ("task_id", "result")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    result: str
    def __init__(self, task_id: _Optional[str] = ..., result: _Optional[str] = ...) -> None: ...

class ActivityFailed(_message.Message):
    __slots__ = ("task_id", "error_type", "message", "retryable", "next_attempt_ms", "definite", "outcome_unknown")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_MS_FIELD_NUMBER: _ClassVar[int]
    DEFINITE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    error_type: str
    message: str
    retryable: bool
    next_attempt_ms: int
    definite: bool
    outcome_unknown: bool
    def __init__(self, task_id: _Optional[str] = ..., error_type: _Optional[str] = ..., message: _Optional[str] = ..., retryable: _Optional[bool] = ..., next_attempt_ms: _Optional[int] = ..., definite: _Optional[bool] = ..., outcome_unknown: _Optional[bool] = ...) -> None: ...

class ActivityTimedOut(_message.Message):
    __slots__ = ("task_id", "timeout_type", "next_attempt_ms", "worker_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_MS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    timeout_type: str
    next_attempt_ms: int
    worker_id: str
    def __init__(self, task_id: _Optional[str] = ..., timeout_type: _Optional[str] = ..., next_attempt_ms: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...

class TimerStarted(_message.Message):
    __slots__ = ("timer_id", "fire_at_ms", "purpose")
    TIMER_ID_FIELD_NUMBER: _ClassVar[int]
    FIRE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    timer_id: str
    fire_at_ms: int
    purpose: str
    def __init__(self, timer_id: _Optional[str] = ..., fire_at_ms: _Optional[int] = ..., purpose: _Optional[str] = ...) -> None: ...

class TimerFired(_message.Message):
    __slots__ = ("timer_id",)
    TIMER_ID_FIELD_NUMBER: _ClassVar[int]
    timer_id: str
    def __init__(self, timer_id: _Optional[str] = ...) -> None: ...

class SignalReceived(_message.Message):
    __slots__ = ("name", "input", "identity")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    input: str
    identity: str
    def __init__(self, name: _Optional[str] = ..., input: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class CancelRequested(_message.Message):
    __slots__ = ("reason", "identity")
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    reason: str
    identity: str
    def __init__(self, reason: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class CompensationStarted(_message.Message):
    __slots__ = ("reason", "steps")
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    steps: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reason: _Optional[str] = ..., steps: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkflowCompleted(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: str
    def __init__(self, result: _Optional[str] = ...) -> None: ...

class WorkflowCompensated(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class WorkflowFailed(_message.Message):
    __slots__ = ("reason", "step")
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    reason: str
    step: str
    def __init__(self, reason: _Optional[str] = ..., step: _Optional[str] = ...) -> None: ...

class WorkflowCancelled(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class WorkflowTerminated(_message.Message):
    __slots__ = ("reason", "identity")
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    reason: str
    identity: str
    def __init__(self, reason: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class StuckDetected(_message.Message):
    __slots__ = ("reason", "message")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class StuckCleared(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class StepEscalated(_message.Message):
    __slots__ = ("step", "attempt", "alert")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    step: str
    attempt: int
    alert: str
    def __init__(self, step: _Optional[str] = ..., attempt: _Optional[int] = ..., alert: _Optional[str] = ...) -> None: ...

class CompletionIgnored(_message.Message):
    __slots__ = ("task_id", "reason", "outcome", "worker_id")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    outcome: str
    worker_id: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ..., outcome: _Optional[str] = ..., worker_id: _Optional[str] = ...) -> None: ...

class CancelRefused(_message.Message):
    __slots__ = ("reason", "step", "message")
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    step: str
    message: str
    def __init__(self, reason: _Optional[str] = ..., step: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ActivityResolved(_message.Message):
    __slots__ = ("step", "compensation", "outcome", "result", "reason", "identity")
    STEP_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    step: str
    compensation: bool
    outcome: str
    result: str
    reason: str
    identity: str
    def __init__(self, step: _Optional[str] = ..., compensation: _Optional[bool] = ..., outcome: _Optional[str] = ..., result: _Optional[str] = ..., reason: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class StepSkipped(_message.Message):
    __slots__ = ("step", "step_index", "condition")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    step: str
    step_index: int
    condition: str
    def __init__(self, step: _Optional[str] = ..., step_index: _Optional[int] = ..., condition: _Optional[str] = ...) -> None: ...

class WorkflowPaused(_message.Message):
    __slots__ = ("reason", "identity")
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    reason: str
    identity: str
    def __init__(self, reason: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class WorkflowResumed(_message.Message):
    __slots__ = ("reason", "identity")
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    reason: str
    identity: str
    def __init__(self, reason: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class WorkflowHeld(_message.Message):
    __slots__ = ("result", "parent_workflow_id")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    PARENT_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    result: str
    parent_workflow_id: str
    def __init__(self, result: _Optional[str] = ..., parent_workflow_id: _Optional[str] = ...) -> None: ...
