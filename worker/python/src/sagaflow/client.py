"""The client: start sagas, wait for them, read their histories, and steer them.

`Client` is asyncio; `SyncClient` wraps it for code without an event loop. Every error the server
answers with is raised as a subclass of `sagaflow.errors.RpcError` (`AlreadyExists`, `NotFound`…).
Given several server addresses (the nodes of a cluster), a client uses the first that connects.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

import grpc
import grpc.aio

from . import errors
from ._channel import Servers, TlsOption, aio_channel, auth_metadata, servers_of
from .checkout.v1 import checkout_pb2, checkout_pb2_grpc
from .v1 import history_pb2, workflow_pb2, workflow_pb2_grpc

T = TypeVar("T")

log = logging.getLogger("sagaflow.client")

# AwaitWorkflow answers within at most this long; longer waits are several calls.
_SERVER_MAX_WAIT_MS = 60_000


class WorkflowStatus(str, enum.Enum):
    RUNNING = "RUNNING"
    COMPENSATING = "COMPENSATING"
    COMPLETED = "COMPLETED"
    COMPENSATED = "COMPENSATED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TERMINATED = "TERMINATED"

    @property
    def terminal(self) -> bool:
        return self not in (WorkflowStatus.RUNNING, WorkflowStatus.COMPENSATING)

    @classmethod
    def _from_proto(cls, value: int) -> WorkflowStatus:
        return cls(workflow_pb2.WorkflowStatus.Name(value).removeprefix("WORKFLOW_STATUS_"))

    def _to_proto(self) -> workflow_pb2.WorkflowStatus:
        status: workflow_pb2.WorkflowStatus = workflow_pb2.WorkflowStatus.Value(f"WORKFLOW_STATUS_{self.value}")
        return status


class CheckoutStatus(str, enum.Enum):
    PENDING = "PENDING"
    RESERVED = "RESERVED"
    PAID = "PAID"
    ORDERED = "ORDERED"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"
    REFUNDED = "REFUNDED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"


@dataclass(frozen=True)
class Started:
    workflow_id: str
    already_started: bool


@dataclass(frozen=True)
class WorkflowSummary:
    workflow_id: str
    workflow_type: str
    definition_version: int
    status: WorkflowStatus
    request_id: str
    labels: dict[str, str]
    correlation_id: str
    current_step: str
    history_length: int
    started_ms: int
    closed_ms: int
    stuck_reason: str
    """Empty unless the workflow is flagged stuck."""

    @classmethod
    def _from_proto(cls, s: workflow_pb2.WorkflowSummary) -> WorkflowSummary:
        return cls(
            workflow_id=s.workflow_id,
            workflow_type=s.workflow_type,
            definition_version=s.definition_version,
            status=WorkflowStatus._from_proto(s.status),
            request_id=s.request_id,
            labels=dict(s.labels),
            correlation_id=s.correlation_id,
            current_step=s.current_step,
            history_length=s.history_length,
            started_ms=s.started_ms,
            closed_ms=s.closed_ms,
            stuck_reason=s.stuck_reason,
        )


@dataclass(frozen=True)
class WorkflowOutcome:
    """How a workflow ended (or that it has not, when `terminal` is False)."""

    workflow_id: str
    status: WorkflowStatus
    terminal: bool
    result: Any
    """The parsed JSON result when COMPLETED, else None."""
    reason: str
    summary: WorkflowSummary

    @classmethod
    def _from_proto(cls, workflow_id: str, r: workflow_pb2.AwaitWorkflowResponse) -> WorkflowOutcome:
        summary = WorkflowSummary._from_proto(r.summary)
        return cls(
            workflow_id=workflow_id,
            status=summary.status,
            terminal=r.terminal,
            result=json.loads(r.result) if r.result else None,
            reason=r.reason,
            summary=summary,
        )


@dataclass(frozen=True)
class PendingActivity:
    task_id: str
    step: str
    activity_type: str
    attempt: int
    compensation: bool
    state: str
    """QUEUED, LEASED or BACKOFF."""
    worker_id: str
    last_failure: str


@dataclass(frozen=True)
class WorkflowDescription:
    summary: WorkflowSummary
    pending: list[PendingActivity]
    result: Any
    reason: str
    step_results: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> WorkflowStatus:
        return self.summary.status


def event_type(event: history_pb2.HistoryEvent) -> str:
    """A history event's contract name, such as `ActivityScheduled`."""
    which = event.WhichOneof("attributes")
    return "".join(part.capitalize() for part in which.split("_")) if which else "Unknown"


def event_attributes(event: history_pb2.HistoryEvent) -> Any:
    """The event's typed attributes message (an `ActivityScheduled`, say)."""
    which = event.WhichOneof("attributes")
    return getattr(event, which) if which else None


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# A client of several nodes dials each afresh when it chooses again: no connection, and no
# reconnect backoff, shared with a channel it gave up.
_NODE_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [("grpc.use_local_subchannel_pool", 1)]


class _Unreachable(Exception):
    pass


@dataclass
class _Connection:
    """A channel to one server, with the stubs over it."""

    server: str
    channel: grpc.aio.Channel
    workflows: workflow_pb2_grpc.WorkflowServiceStub = field(init=False)
    checkouts: checkout_pb2_grpc.CheckoutServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.workflows = workflow_pb2_grpc.WorkflowServiceStub(self.channel)
        self.checkouts = checkout_pb2_grpc.CheckoutServiceStub(self.channel)


async def _ready(channel: grpc.aio.Channel) -> None:
    """Returns once `channel` is connected; raises `_Unreachable` as soon as an attempt fails."""
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            raise _Unreachable("the connection failed")
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


class Client:
    """An asyncio client of a Sagaflow server.

    `server` is `host:port`, `http://host:port` or `https://host:port`, or several of them (the
    nodes of a cluster, of which one serves), comma-separated in one string or as a list; a blank
    entry raises ValueError. With one address, calls go to it (gRPC connects, and reconnects, as
    needed). With several, the first call connects to each in turn, waiting up to
    `connect_timeout` seconds for each, and the client uses the first that connects; when that
    connection is lost (no longer ready), or its node answers `Unavailable` (it is stepping down,
    or cannot reach its store), the next call chooses again the same way, beginning with the node
    after it. A call is never re-sent on another node: the one that failed raises, and none
    connecting raises `Unavailable`.
    Use it as an async context manager, or call `close()`.
    """

    def __init__(
        self,
        server: Servers = "127.0.0.1:50051",
        *,
        token: Optional[str] = None,
        tls: TlsOption = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._servers = servers_of(server, tls)
        self._tls = tls
        self._metadata = auth_metadata(token)
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._connection: Optional[_Connection] = None
        if len(self._servers) == 1:
            self._connection = _Connection(self._servers[0], aio_channel(self._servers[0], tls))
        self._choosing: Optional[asyncio.Lock] = None
        self._closed = False
        # The connection whose node answered UNAVAILABLE: given up at the next call.
        self._refused: Optional[_Connection] = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            await self._connection.channel.close()

    async def _connected(self) -> _Connection:
        """The connection to call on: with several nodes, the first that connects, chosen again once
        the one in use is no longer ready (its node died, or it idled out)."""
        connection = self._connection
        if connection is not None and (
            len(self._servers) == 1
            or self._closed
            or (connection is not self._refused and connection.channel.get_state() is grpc.ChannelConnectivity.READY)
        ):
            return connection
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._choosing is None:
            self._choosing = asyncio.Lock()
        async with self._choosing:
            if self._connection is not connection and self._connection is not None:
                return self._connection  # another call chose meanwhile
            start = 0
            if connection is not None:
                self._connection = None
                await connection.channel.close()
                start = self._servers.index(connection.server) + 1
            self._refused = None
            chosen = await self._first_that_connects(start)
            if self._closed:
                await chosen.channel.close()
                raise RuntimeError("the client is closed")
            self._connection = chosen
            return chosen

    async def _first_that_connects(self, start: int = 0) -> _Connection:
        """The first node, from the `start`-th on and round to the beginning, that connects."""
        failures = []
        for server in self._servers[start:] + self._servers[:start]:
            channel = aio_channel(server, self._tls, _NODE_CHANNEL_OPTIONS)
            try:
                await asyncio.wait_for(_ready(channel), self._connect_timeout)
            except (_Unreachable, asyncio.TimeoutError) as error:
                await channel.close()
                why = str(error) or f"no connection within {self._connect_timeout} s"
                log.info("cannot reach the server at %s: %s", server, why)
                failures.append(f"{server}: {why}")
                continue
            log.info("connected to the server at %s", server)
            return _Connection(server, channel)
        raise errors.Unavailable(f"no server of {', '.join(self._servers)} answered ({'; '.join(failures)})")

    async def _call(
        self,
        method: Callable[[_Connection], Callable[..., Awaitable[T]]],
        request: Any,
        *,
        timeout: Optional[float] = None,
        correlation_id: Optional[str] = None,
        traceparent: Optional[str] = None,
    ) -> T:
        metadata = list(self._metadata)
        if correlation_id:
            metadata.append(("x-correlation-id", correlation_id))
        if traceparent:
            metadata.append(("traceparent", traceparent))
        connection = await self._connected()
        try:
            return await method(connection)(request, metadata=metadata, timeout=timeout or self._timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNAVAILABLE:
                self._refused = connection
            raise errors.from_grpc(error) from None

    # -- workflows -----------------------------------------------------------------------------

    async def start(
        self,
        workflow_type: str,
        input: Any = None,
        *,
        request_id: Optional[str] = None,
        workflow_id: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        correlation_id: Optional[str] = None,
        traceparent: Optional[str] = None,
    ) -> Started:
        """Starts a workflow. Idempotent by `request_id` (a random one when None): the same id with the
        same input returns the same workflow with `already_started=True`; with different input,
        raises `AlreadyExists`. `correlation_id` and a W3C `traceparent` go with the saga to every
        activity it runs."""
        request = self._start_request(workflow_type, input, request_id, workflow_id, labels)
        r = await self._call(
            lambda c: c.workflows.StartWorkflow, request, correlation_id=correlation_id, traceparent=traceparent
        )
        return Started(r.workflow_id, r.already_started)

    async def execute(
        self,
        workflow_type: str,
        input: Any = None,
        *,
        request_id: Optional[str] = None,
        workflow_id: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        correlation_id: Optional[str] = None,
        traceparent: Optional[str] = None,
        timeout: float = 60.0,
    ) -> WorkflowOutcome:
        """Starts a workflow (as `start`) and waits up to `timeout` seconds for its end.

        Raises `WorkflowTimedOut` if it has not ended by then."""
        request = workflow_pb2.ExecuteWorkflowRequest(
            start=self._start_request(workflow_type, input, request_id, workflow_id, labels),
            timeout_ms=min(int(timeout * 1000), _SERVER_MAX_WAIT_MS),
        )
        r = await self._call(
            lambda c: c.workflows.ExecuteWorkflow,
            request,
            timeout=timeout + 10,
            correlation_id=correlation_id,
            traceparent=traceparent,
        )
        outcome = WorkflowOutcome._from_proto(r.workflow_id, r.outcome)
        if outcome.terminal:
            return outcome
        remaining = timeout - _SERVER_MAX_WAIT_MS / 1000
        if remaining <= 0:
            raise errors.WorkflowTimedOut(r.workflow_id, timeout)
        return await self.wait(r.workflow_id, timeout=remaining)

    async def wait(self, workflow_id: str, *, timeout: float = 60.0) -> WorkflowOutcome:
        """Waits (AwaitWorkflow) up to `timeout` seconds for the workflow to end.

        Raises `WorkflowTimedOut` if it has not ended by then, `NotFound` if there is no such workflow."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left_ms = int((deadline - loop.time()) * 1000)
            if left_ms <= 0:
                raise errors.WorkflowTimedOut(workflow_id, timeout)
            request = workflow_pb2.AwaitWorkflowRequest(
                workflow_id=workflow_id, timeout_ms=min(left_ms, _SERVER_MAX_WAIT_MS)
            )
            r = await self._call(lambda c: c.workflows.AwaitWorkflow, request, timeout=left_ms / 1000 + 10)
            if r.terminal:
                return WorkflowOutcome._from_proto(workflow_id, r)

    async def describe(self, workflow_id: str) -> WorkflowDescription:
        r = await self._call(
            lambda c: c.workflows.DescribeWorkflow, workflow_pb2.DescribeWorkflowRequest(workflow_id=workflow_id)
        )
        return WorkflowDescription(
            summary=WorkflowSummary._from_proto(r.summary),
            pending=[
                PendingActivity(
                    task_id=p.task_id,
                    step=p.step,
                    activity_type=p.activity_type,
                    attempt=p.attempt,
                    compensation=p.compensation,
                    state=p.state,
                    worker_id=p.worker_id,
                    last_failure=p.last_failure,
                )
                for p in r.pending_activities
            ],
            result=json.loads(r.result) if r.result else None,
            reason=r.reason,
            step_results={k: json.loads(v) if v else None for k, v in r.step_results.items()},
        )

    async def history(
        self,
        workflow_id: str,
        *,
        from_seq: int = 1,
        page_size: int = 500,
        follow: bool = False,
        archived: bool = False,
    ) -> AsyncIterator[history_pb2.HistoryEvent]:
        """Every event of the workflow's history, in order, fetched page by page.

        With `follow`, keeps waiting for new events until the workflow ends. With `archived`, reads
        the history of a deleted workflow from the server's archive (`--archive-dir`)."""
        seq = from_seq
        while True:
            request = workflow_pb2.GetWorkflowHistoryRequest(
                workflow_id=workflow_id,
                from_seq=seq,
                page_size=page_size,
                wait_ms=30_000 if follow and not archived else 0,
                archived=archived,
            )
            page = await self._call(lambda c: c.workflows.GetWorkflowHistory, request, timeout=self._timeout + 30)
            for event in page.events:
                yield event
            seq = page.next_seq
            if page.terminal or (not follow and len(page.events) < page_size):
                return

    async def list(
        self,
        *,
        statuses: Sequence[WorkflowStatus] = (),
        workflow_type: str = "",
        labels: Optional[Mapping[str, str]] = None,
        stuck_only: bool = False,
        page_size: int = 100,
    ) -> AsyncIterator[WorkflowSummary]:
        """Workflows matching every given filter, fetched page by page."""
        token = ""
        while True:
            request = workflow_pb2.ListWorkflowsRequest(
                statuses=[s._to_proto() for s in statuses],
                workflow_type=workflow_type,
                labels=dict(labels or {}),
                stuck_only=stuck_only,
                page_size=page_size,
                page_token=token,
            )
            page = await self._call(lambda c: c.workflows.ListWorkflows, request)
            for summary in page.workflows:
                yield WorkflowSummary._from_proto(summary)
            token = page.next_page_token
            if not token:
                return

    async def signal(self, workflow_id: str, name: str, input: Any = None, *, identity: str = "") -> int:
        """Delivers a signal; returns its sequence number in the history."""
        request = workflow_pb2.SignalWorkflowRequest(
            workflow_id=workflow_id, name=name, input=_json_bytes(input), identity=identity
        )
        r = await self._call(lambda c: c.workflows.SignalWorkflow, request)
        return int(r.seq)

    async def cancel(self, workflow_id: str, reason: str, *, identity: str = "") -> None:
        """Asks the workflow to stop and run its compensations. Refused (`FailedPrecondition`) after the pivot."""
        request = workflow_pb2.CancelWorkflowRequest(workflow_id=workflow_id, reason=reason, identity=identity)
        await self._call(lambda c: c.workflows.CancelWorkflow, request)

    async def terminate(self, workflow_id: str, reason: str, *, identity: str = "") -> None:
        """Stops the workflow at once, running no compensation."""
        request = workflow_pb2.TerminateWorkflowRequest(workflow_id=workflow_id, reason=reason, identity=identity)
        await self._call(lambda c: c.workflows.TerminateWorkflow, request)

    async def delete(self, workflow_id: str) -> None:
        """Deletes a closed workflow now (archived first when the server archives); an open one
        raises FailedPrecondition."""
        await self._call(lambda c: c.workflows.DeleteWorkflow, workflow_pb2.DeleteWorkflowRequest(workflow_id=workflow_id))

    # -- the reference shop's checkout ---------------------------------------------------------

    async def start_checkout(
        self,
        client_request_id: str,
        customer_id: str,
        items: Mapping[str, int],
        *,
        coupon_code: str = "",
        payment_method: str = "",
        shipping_address: str = "",
        correlation_id: Optional[str] = None,
    ) -> checkout_pb2.StartCheckoutResponse:
        """Starts a checkout of `items` (sku: quantity). Idempotent by `client_request_id`."""
        request = checkout_pb2.StartCheckoutRequest(
            client_request_id=client_request_id,
            customer_id=customer_id,
            items=[checkout_pb2.Item(sku=sku, quantity=quantity) for sku, quantity in items.items()],
            coupon_code=coupon_code,
            payment_method=payment_method,
            shipping_address=shipping_address,
        )
        return await self._call(lambda c: c.checkouts.StartCheckout, request, correlation_id=correlation_id)

    async def get_checkout(self, checkout_id: str) -> checkout_pb2.Checkout:
        return await self._call(lambda c: c.checkouts.GetCheckout, checkout_pb2.GetCheckoutRequest(checkout_id=checkout_id))

    async def refund_checkout(
        self, checkout_id: str, refund_id: str, amount_cents: int
    ) -> checkout_pb2.RefundCheckoutResponse:
        request = checkout_pb2.RefundCheckoutRequest(
            checkout_id=checkout_id, refund_id=refund_id, amount_cents=amount_cents
        )
        return await self._call(lambda c: c.checkouts.RefundCheckout, request)

    @staticmethod
    def _start_request(
        workflow_type: str,
        input: Any,
        request_id: Optional[str],
        workflow_id: Optional[str],
        labels: Optional[Mapping[str, str]],
    ) -> workflow_pb2.StartWorkflowRequest:
        return workflow_pb2.StartWorkflowRequest(
            workflow_type=workflow_type,
            request_id=request_id or str(uuid.uuid4()),
            input=_json_bytes(input if input is not None else {}),
            workflow_id=workflow_id or "",
            labels=dict(labels or {}),
        )


def checkout_status(checkout: checkout_pb2.Checkout) -> CheckoutStatus:
    return CheckoutStatus(checkout_pb2.CheckoutStatus.Name(checkout.status).removeprefix("CHECKOUT_STATUS_"))


class SyncClient:
    """`Client` for code without an event loop: the same calls, blocking.

    It runs its own event loop on a background thread; use it as a context manager, or call `close()`.
    `server` takes one address or several, as `Client`'s does.
    """

    def __init__(
        self,
        server: Servers = "127.0.0.1:50051",
        *,
        token: Optional[str] = None,
        tls: TlsOption = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        # Checked here, so that a bad address raises before a thread is started.
        servers = servers_of(server, tls)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sagaflow-client", daemon=True)
        self._thread.start()
        self._client: Client = self._run(_make_client(servers, token, tls, timeout, connect_timeout))

    def _run(self, coro: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result()

    def _iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        while True:
            try:
                yield self._run(iterator.__anext__())
            except StopAsyncIteration:
                return

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def start(self, workflow_type: str, input: Any = None, **kwargs: Any) -> Started:
        return self._run(self._client.start(workflow_type, input, **kwargs))

    def execute(self, workflow_type: str, input: Any = None, **kwargs: Any) -> WorkflowOutcome:
        return self._run(self._client.execute(workflow_type, input, **kwargs))

    def wait(self, workflow_id: str, *, timeout: float = 60.0) -> WorkflowOutcome:
        return self._run(self._client.wait(workflow_id, timeout=timeout))

    def describe(self, workflow_id: str) -> WorkflowDescription:
        return self._run(self._client.describe(workflow_id))

    def history(self, workflow_id: str, **kwargs: Any) -> Iterator[history_pb2.HistoryEvent]:
        return self._iterate(self._client.history(workflow_id, **kwargs))

    def list(self, **kwargs: Any) -> Iterator[WorkflowSummary]:
        return self._iterate(self._client.list(**kwargs))

    def signal(self, workflow_id: str, name: str, input: Any = None, *, identity: str = "") -> int:
        return self._run(self._client.signal(workflow_id, name, input, identity=identity))

    def cancel(self, workflow_id: str, reason: str, *, identity: str = "") -> None:
        self._run(self._client.cancel(workflow_id, reason, identity=identity))

    def terminate(self, workflow_id: str, reason: str, *, identity: str = "") -> None:
        self._run(self._client.terminate(workflow_id, reason, identity=identity))

    def delete(self, workflow_id: str) -> None:
        self._run(self._client.delete(workflow_id))

    def start_checkout(
        self, client_request_id: str, customer_id: str, items: Mapping[str, int], **kwargs: Any
    ) -> checkout_pb2.StartCheckoutResponse:
        return self._run(self._client.start_checkout(client_request_id, customer_id, items, **kwargs))

    def get_checkout(self, checkout_id: str) -> checkout_pb2.Checkout:
        return self._run(self._client.get_checkout(checkout_id))

    def refund_checkout(self, checkout_id: str, refund_id: str, amount_cents: int) -> checkout_pb2.RefundCheckoutResponse:
        return self._run(self._client.refund_checkout(checkout_id, refund_id, amount_cents))


async def _make_client(
    servers: Servers, token: Optional[str], tls: TlsOption, timeout: float, connect_timeout: float
) -> Client:
    # The channel must be made on the loop that will use it.
    return Client(servers, token=token, tls=tls, timeout=timeout, connect_timeout=connect_timeout)
