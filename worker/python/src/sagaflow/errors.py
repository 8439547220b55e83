"""Typed exceptions: callers branch on the class, never on a message or a raw gRPC status."""

from __future__ import annotations

import grpc


class SagaflowError(Exception):
    """Base of every error this package raises."""


class RpcError(SagaflowError):
    """The server answered a call with an error status. Subclasses name the status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class AlreadyExists(RpcError):
    """The request id is taken by a start with different input."""

    code = grpc.StatusCode.ALREADY_EXISTS


class NotFound(RpcError):
    """No such workflow (or checkout)."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(RpcError):
    """The request is malformed: an unknown type, bad JSON, an id too long."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(RpcError):
    """The workflow is not in a state that allows this (a cancel after the pivot, say)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(RpcError):
    """The token's role or tenant does not allow this call."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(RpcError):
    """No token, or a token the server does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(RpcError):
    """A limit was hit (payload size, rate, history length): retry later or send less."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(RpcError):
    """The server cannot be reached, or refuses writes for now. Safe to retry idempotent calls."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RpcError):
    """The call's deadline passed before the server answered."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


_BY_CODE: dict[grpc.StatusCode, type[RpcError]] = {
    cls.code: cls
    for cls in (
        AlreadyExists,
        NotFound,
        InvalidArgument,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
    )
}


def from_grpc(error: grpc.RpcError) -> RpcError:
    """The typed exception for a gRPC error status."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(code)
    cls = _BY_CODE.get(code)
    return cls(details) if cls is not None else RpcError(details, code)


class DrainTimedOut(SagaflowError):
    """A worker's drain did not finish in time; its remaining tasks were stopped (the server retries them)."""

    def __init__(self, timeout: float, running: int, unacked: int) -> None:
        super().__init__(
            f"drain did not finish within {timeout} s: {running} task(s) still running, "
            f"{unacked} outcome(s) not acknowledged"
        )
        self.timeout = timeout
        self.running = running
        self.unacked = unacked


class WorkflowTimedOut(SagaflowError):
    """A wait for a workflow's end ran out of time; the workflow is still open."""

    def __init__(self, workflow_id: str, timeout: float) -> None:
        super().__init__(f"workflow {workflow_id} did not end within {timeout} s")
        self.workflow_id = workflow_id
        self.timeout = timeout
