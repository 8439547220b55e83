from sagaflow.v1 import history_pb2 as _history_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DefinitionChange(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEFINITION_CHANGE_UNSPECIFIED: _ClassVar[DefinitionChange]
    DEFINITION_CHANGE_NEW_TYPE: _ClassVar[DefinitionChange]
    DEFINITION_CHANGE_NEW_VERSION: _ClassVar[DefinitionChange]
    DEFINITION_CHANGE_IDENTICAL: _ClassVar[DefinitionChange]
    DEFINITION_CHANGE_CONFLICT: _ClassVar[DefinitionChange]

class WorkflowStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_STATUS_UNSPECIFIED: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_RUNNING: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_COMPENSATING: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_COMPLETED: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_COMPENSATED: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_FAILED: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_CANCELLED: _ClassVar[WorkflowStatus]
    WORKFLOW_STATUS_TERMINATED: _ClassVar[WorkflowStatus]

class ResolvedOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOLVED_OUTCOME_UNSPECIFIED: _ClassVar[ResolvedOutcome]
    RESOLVED_OUTCOME_SUCCEEDED: _ClassVar[ResolvedOutcome]
    RESOLVED_OUTCOME_FAILED: _ClassVar[ResolvedOutcome]
DEFINITION_CHANGE_UNSPECIFIED: DefinitionChange
DEFINITION_CHANGE_NEW_TYPE: DefinitionChange
DEFINITION_CHANGE_NEW_VERSION: DefinitionChange
DEFINITION_CHANGE_IDENTICAL: DefinitionChange
DEFINITION_CHANGE_CONFLICT: DefinitionChange
WORKFLOW_STATUS_UNSPECIFIED: WorkflowStatus
WORKFLOW_STATUS_RUNNING: WorkflowStatus
WORKFLOW_STATUS_COMPENSATING: WorkflowStatus
WORKFLOW_STATUS_COMPLETED: WorkflowStatus
WORKFLOW_STATUS_COMPENSATED: WorkflowStatus
WORKFLOW_STATUS_FAILED: WorkflowStatus
WORKFLOW_STATUS_CANCELLED: WorkflowStatus
WORKFLOW_STATUS_TERMINATED: WorkflowStatus
RESOLVED_OUTCOME_UNSPECIFIED: ResolvedOutcome
RESOLVED_OUTCOME_SUCCEEDED: ResolvedOutcome
RESOLVED_OUTCOME_FAILED: ResolvedOutcome

class DefinitionVersion(_message.Message):
    __slots__ = ("workflow_type", "version", "content_hash", "deprecated", "built_in", "definition")
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    DEPRECATED_FIELD_NUMBER: _ClassVar[int]
    BUILT_IN_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    workflow_type: str
    version: int
    content_hash: str
    deprecated: bool
    built_in: bool
    definition: str
    def __init__(self, workflow_type: _Optional[str] = ..., version: _Optional[int] = ..., content_hash: _Optional[str] = ..., deprecated: _Optional[bool] = ..., built_in: _Optional[bool] = ..., definition: _Optional[str] = ...) -> None: ...

class RegisterDefinitionRequest(_message.Message):
    __slots__ = ("definitions", "dry_run")
    DEFINITIONS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    definitions: _containers.RepeatedScalarFieldContainer[str]
    dry_run: bool
    def __init__(self, definitions: _Optional[_Iterable[str]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class DefinitionRegistration(_message.Message):
    __slots__ = ("workflow_type", "version", "content_hash", "change", "registered_hash")
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_HASH_FIELD_NUMBER: _ClassVar[int]
    workflow_type: str
    version: int
    content_hash: str
    change: DefinitionChange
    registered_hash: str
    def __init__(self, workflow_type: _Optional[str] = ..., version: _Optional[int] = ..., content_hash: _Optional[str] = ..., change: _Optional[_Union[DefinitionChange, str]] = ..., registered_hash: _Optional[str] = ...) -> None: ...

class RegisterDefinitionResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DefinitionRegistration]
    def __init__(self, results: _Optional[_Iterable[_Union[DefinitionRegistration, _Mapping]]] = ...) -> None: ...

class GetDefinitionRequest(_message.Message):
    __slots__ = ("workflow_type", "version")
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    workflow_type: str
    version: int
    def __init__(self, workflow_type: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetDefinitionResponse(_message.Message):
    __slots__ = ("definition",)
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    definition: DefinitionVersion
    def __init__(self, definition: _Optional[_Union[DefinitionVersion, _Mapping]] = ...) -> None: ...

class ListDefinitionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DefinitionType(_message.Message):
    __slots__ = ("workflow_type", "versions")
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    workflow_type: str
    versions: _containers.RepeatedCompositeFieldContainer[DefinitionVersion]
    def __init__(self, workflow_type: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[DefinitionVersion, _Mapping]]] = ...) -> None: ...

class ListDefinitionsResponse(_message.Message):
    __slots__ = ("types",)
    TYPES_FIELD_NUMBER: _ClassVar[int]
    types: _containers.RepeatedCompositeFieldContainer[DefinitionType]
    def __init__(self, types: _Optional[_Iterable[_Union[DefinitionType, _Mapping]]] = ...) -> None: ...

class DeprecateDefinitionRequest(_message.Message):
    __slots__ = ("workflow_type", "version")
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    workflow_type: str
    version: int
    def __init__(self, workflow_type: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeprecateDefinitionResponse(_message.Message):
    __slots__ = ("already_deprecated",)
    ALREADY_DEPRECATED_FIELD_NUMBER: _ClassVar[int]
    already_deprecated: bool
    def __init__(self, already_deprecated: _Optional[bool] = ...) -> None: ...

class WorkflowSummary(_message.Message):
    __slots__ = ("workflow_id", "workflow_type", "definition_version", "status", "request_id", "labels", "started_ms", "updated_ms", "closed_ms", "history_length", "stuck_reason", "stuck_message", "correlation_id", "current_step", "paused_reason")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    CLOSED_MS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    STUCK_REASON_FIELD_NUMBER: _ClassVar[int]
    STUCK_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    PAUSED_REASON_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    workflow_type: str
    definition_version: int
    status: WorkflowStatus
    request_id: str
    labels: _containers.ScalarMap[str, str]
    started_ms: int
    updated_ms: int
    closed_ms: int
    history_length: int
    stuck_reason: str
    stuck_message: str
    correlation_id: str
    current_step: str
    paused_reason: str
    def __init__(self, workflow_id: _Optional[str] = ..., workflow_type: _Optional[str] = ..., definition_version: _Optional[int] = ..., status: _Optional[_Union[WorkflowStatus, str]] = ..., request_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., started_ms: _Optional[int] = ..., updated_ms: _Optional[int] = ..., closed_ms: _Optional[int] = ..., history_length: _Optional[int] = ..., stuck_reason: _Optional[str] = ..., stuck_message: _Optional[str] = ..., correlation_id: _Optional[str] = ..., current_step: _Optional[str] = ..., paused_reason: _Optional[str] = ...) -> None: ...

class StartWorkflowRequest(_message.Message):
    __slots__ = ("workflow_type", "request_id", "input", "workflow_id", "labels", "definition_version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_VERSION_FIELD_NUMBER: _ClassVar[int]
    workflow_type: str
    request_id: str
    input: bytes
    workflow_id: str
    labels: _containers.ScalarMap[str, str]
    definition_version: int
    def __init__(self, workflow_type: _Optional[str] = ..., request_id: _Optional[str] = ..., input: _Optional[bytes] = ..., workflow_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., definition_version: _Optional[int] = ...) -> None: ...

class StartWorkflowResponse(_message.Message):
    __slots__ = ("workflow_id", "already_started")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STARTED_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    already_started: bool
    def __init__(self, workflow_id: _Optional[str] = ..., already_started: _Optional[bool] = ...) -> None: ...

class DescribeWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class PendingActivity(_message.Message):
    __slots__ = ("task_id", "step", "activity_type", "attempt", "compensation", "state", "worker_id", "scheduled_ms", "next_attempt_ms", "last_failure")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEDULED_MS_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    step: str
    activity_type: str
    attempt: int
    compensation: bool
    state: str
    worker_id: str
    scheduled_ms: int
    next_attempt_ms: int
    last_failure: str
    def __init__(self, task_id: _Optional[str] = ..., step: _Optional[str] = ..., activity_type: _Optional[str] = ..., attempt: _Optional[int] = ..., compensation: _Optional[bool] = ..., state: _Optional[str] = ..., worker_id: _Optional[str] = ..., scheduled_ms: _Optional[int] = ..., next_attempt_ms: _Optional[int] = ..., last_failure: _Optional[str] = ...) -> None: ...

class DescribeWorkflowResponse(_message.Message):
    __slots__ = ("summary", "pending_activities", "result", "reason", "step_results")
    class StepResultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PENDING_ACTIVITIES_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEP_RESULTS_FIELD_NUMBER: _ClassVar[int]
    summary: WorkflowSummary
    pending_activities: _containers.RepeatedCompositeFieldContainer[PendingActivity]
    result: str
    reason: str
    step_results: _containers.ScalarMap[str, str]
    def __init__(self, summary: _Optional[_Union[WorkflowSummary, _Mapping]] = ..., pending_activities: _Optional[_Iterable[_Union[PendingActivity, _Mapping]]] = ..., result: _Optional[str] = ..., reason: _Optional[str] = ..., step_results: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetWorkflowHistoryRequest(_message.Message):
    __slots__ = ("workflow_id", "from_seq", "page_size", "wait_ms", "archived")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    from_seq: int
    page_size: int
    wait_ms: int
    archived: bool
    def __init__(self, workflow_id: _Optional[str] = ..., from_seq: _Optional[int] = ..., page_size: _Optional[int] = ..., wait_ms: _Optional[int] = ..., archived: _Optional[bool] = ...) -> None: ...

class GetWorkflowHistoryResponse(_message.Message):
    __slots__ = ("events", "next_seq", "terminal")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_history_pb2.HistoryEvent]
    next_seq: int
    terminal: bool
    def __init__(self, events: _Optional[_Iterable[_Union[_history_pb2.HistoryEvent, _Mapping]]] = ..., next_seq: _Optional[int] = ..., terminal: _Optional[bool] = ...) -> None: ...

class ListWorkflowsRequest(_message.Message):
    __slots__ = ("statuses", "workflow_type", "labels", "stuck_only", "page_size", "page_token", "paused_only")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STUCK_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PAUSED_ONLY_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedScalarFieldContainer[WorkflowStatus]
    workflow_type: str
    labels: _containers.ScalarMap[str, str]
    stuck_only: bool
    page_size: int
    page_token: str
    paused_only: bool
    def __init__(self, statuses: _Optional[_Iterable[_Union[WorkflowStatus, str]]] = ..., workflow_type: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., stuck_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., paused_only: _Optional[bool] = ...) -> None: ...

class ListWorkflowsResponse(_message.Message):
    __slots__ = ("workflows", "next_page_token")
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[WorkflowSummary]
    next_page_token: str
    def __init__(self, workflows: _Optional[_Iterable[_Union[WorkflowSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AwaitWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "timeout_ms")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    timeout_ms: int
    def __init__(self, workflow_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ExecuteWorkflowRequest(_message.Message):
    __slots__ = ("start", "timeout_ms")
    START_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    start: StartWorkflowRequest
    timeout_ms: int
    def __init__(self, start: _Optional[_Union[StartWorkflowRequest, _Mapping]] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class ExecuteWorkflowResponse(_message.Message):
    __slots__ = ("workflow_id", "already_started", "outcome")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STARTED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    already_started: bool
    outcome: AwaitWorkflowResponse
    def __init__(self, workflow_id: _Optional[str] = ..., already_started: _Optional[bool] = ..., outcome: _Optional[_Union[AwaitWorkflowResponse, _Mapping]] = ...) -> None: ...

class AwaitWorkflowResponse(_message.Message):
    __slots__ = ("summary", "terminal", "result", "reason")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    summary: WorkflowSummary
    terminal: bool
    result: str
    reason: str
    def __init__(self, summary: _Optional[_Union[WorkflowSummary, _Mapping]] = ..., terminal: _Optional[bool] = ..., result: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SignalWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "name", "input", "identity")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    name: str
    input: bytes
    identity: str
    def __init__(self, workflow_id: _Optional[str] = ..., name: _Optional[str] = ..., input: _Optional[bytes] = ..., identity: _Optional[str] = ...) -> None: ...

class SignalWorkflowResponse(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class CancelWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "reason", "identity")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    reason: str
    identity: str
    def __init__(self, workflow_id: _Optional[str] = ..., reason: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class CancelWorkflowResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PauseWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "reason", "identity")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    reason: str
    identity: str
    def __init__(self, workflow_id: _Optional[str] = ..., reason: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class PauseWorkflowResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...

class DeleteWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class DeleteWorkflowResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RedriveWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class RedriveWorkflowResponse(_message.Message):
    __slots__ = ("workflow_id", "from_step", "carried_steps", "already_redriven")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    CARRIED_STEPS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_REDRIVEN_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    from_step: str
    carried_steps: _containers.RepeatedScalarFieldContainer[str]
    already_redriven: bool
    def __init__(self, workflow_id: _Optional[str] = ..., from_step: _Optional[str] = ..., carried_steps: _Optional[_Iterable[str]] = ..., already_redriven: _Optional[bool] = ...) -> None: ...

class ResumeWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "reason", "identity")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    reason: str
    identity: str
    def __init__(self, workflow_id: _Optional[str] = ..., reason: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class ResumeWorkflowResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...

class TerminateWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "reason", "identity")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    reason: str
    identity: str
    def __init__(self, workflow_id: _Optional[str] = ..., reason: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class TerminateWorkflowResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkflowTypesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkflowType(_message.Message):
    __slots__ = ("name", "version", "definition")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFINITION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    definition: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., definition: _Optional[str] = ...) -> None: ...

class ListWorkflowTypesResponse(_message.Message):
    __slots__ = ("types",)
    TYPES_FIELD_NUMBER: _ClassVar[int]
    types: _containers.RepeatedCompositeFieldContainer[WorkflowType]
    def __init__(self, types: _Optional[_Iterable[_Union[WorkflowType, _Mapping]]] = ...) -> None: ...

class ResolveActivityRequest(_message.Message):
    __slots__ = ("workflow_id", "step", "outcome", "reason", "result", "identity")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    step: str
    outcome: ResolvedOutcome
    reason: str
    result: bytes
    identity: str
    def __init__(self, workflow_id: _Optional[str] = ..., step: _Optional[str] = ..., outcome: _Optional[_Union[ResolvedOutcome, str]] = ..., reason: _Optional[str] = ..., result: _Optional[bytes] = ..., identity: _Optional[str] = ...) -> None: ...

class ResolveActivityResponse(_message.Message):
    __slots__ = ("seq", "compensation")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_FIELD_NUMBER: _ClassVar[int]
    seq: int
    compensation: bool
    def __init__(self, seq: _Optional[int] = ..., compensation: _Optional[bool] = ...) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueueWorker(_message.Message):
    __slots__ = ("worker_id", "credit")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    credit: int
    def __init__(self, worker_id: _Optional[str] = ..., credit: _Optional[int] = ...) -> None: ...

class QueueInfo(_message.Message):
    __slots__ = ("queue", "workers", "in_flight", "backlog", "paused_reason", "paused_by", "paused_ms")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    PAUSED_REASON_FIELD_NUMBER: _ClassVar[int]
    PAUSED_BY_FIELD_NUMBER: _ClassVar[int]
    PAUSED_MS_FIELD_NUMBER: _ClassVar[int]
    queue: str
    workers: _containers.RepeatedCompositeFieldContainer[QueueWorker]
    in_flight: int
    backlog: int
    paused_reason: str
    paused_by: str
    paused_ms: int
    def __init__(self, queue: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[QueueWorker, _Mapping]]] = ..., in_flight: _Optional[int] = ..., backlog: _Optional[int] = ..., paused_reason: _Optional[str] = ..., paused_by: _Optional[str] = ..., paused_ms: _Optional[int] = ...) -> None: ...

class PauseQueueRequest(_message.Message):
    __slots__ = ("queue", "reason", "identity")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    queue: str
    reason: str
    identity: str
    def __init__(self, queue: _Optional[str] = ..., reason: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class PauseQueueResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...

class ResumeQueueRequest(_message.Message):
    __slots__ = ("queue", "identity")
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    queue: str
    identity: str
    def __init__(self, queue: _Optional[str] = ..., identity: _Optional[str] = ...) -> None: ...

class ResumeQueueResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("queues",)
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[QueueInfo]
    def __init__(self, queues: _Optional[_Iterable[_Union[QueueInfo, _Mapping]]] = ...) -> None: ...
