"""Sagaflow's Python SDK.

- `Worker` serves activities to a Sagaflow server (asyncio), with `ActivityContext` and `ActivityError`.
- `Client` (asyncio) and `SyncClient` start sagas, wait for them, read their histories and steer them.
- `sagaflow.errors` holds the typed exceptions; the generated gRPC stubs are `sagaflow.v1` and
  `sagaflow.checkout.v1`.
"""

from ._channel import TlsConfig
from .client import (
    CheckoutStatus,
    Client,
    PendingActivity,
    Started,
    SyncClient,
    WorkflowDescription,
    WorkflowOutcome,
    WorkflowStatus,
    WorkflowSummary,
    checkout_status,
    event_attributes,
    event_type,
)
from .errors import (
    AlreadyExists,
    DrainTimedOut,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RpcError,
    SagaflowError,
    Unauthenticated,
    Unavailable,
    WorkflowTimedOut,
)
from .worker import ActivityContext, ActivityError, CorrelationFilter, Worker, current_context

__all__ = [
    "ActivityContext",
    "ActivityError",
    "AlreadyExists",
    "CheckoutStatus",
    "Client",
    "CorrelationFilter",
    "DrainTimedOut",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PendingActivity",
    "PermissionDenied",
    "ResourceExhausted",
    "RpcError",
    "SagaflowError",
    "Started",
    "SyncClient",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "Worker",
    "WorkflowDescription",
    "WorkflowOutcome",
    "WorkflowStatus",
    "WorkflowSummary",
    "WorkflowTimedOut",
    "checkout_status",
    "current_context",
    "event_attributes",
    "event_type",
]
