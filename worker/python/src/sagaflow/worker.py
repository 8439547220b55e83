"""The asyncio worker: serves activities to a Sagaflow server over one `OpenSession` stream.

It may be given several server addresses (the nodes of a cluster, of which one serves): each
reconnect after a failed or lost session moves to the next address, round robin, as the Rust SDK's
worker does.

The protocol, as the Rust SDK keeps it:
- The worker grants credit and never holds more tasks than `max_concurrency`: a task holds a slot
  from its arrival until the server acknowledges its outcome (or cancels it), and per session
  `running + unacknowledged + credit not yet used <= max_concurrency`.
- Every task carries an opaque lease token, echoed in its outcome, its heartbeats and, after a
  reconnect, in `Register.held`; the server refuses a message without it.
- An outcome is kept until acknowledged and re-sent after a reconnect. An acknowledgement with
  `refused` set means refused for good: the outcome is dropped, never re-sent.
- A result larger than `Registered.max_result_bytes` is reported as the non-retryable failure
  `ResultTooLarge`: sent as it is, it would end the stream, and every next one after a re-send.

All state lives on the event loop, so nothing needs a lock.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import os
import random
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, Union

import grpc
import grpc.aio

from ._channel import Servers, TlsOption, aio_channel, auth_metadata, servers_of
from .errors import DrainTimedOut
from .v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("sagaflow.worker")

Handler = Callable[["ActivityContext", Any], Awaitable[Any]]
H = TypeVar("H", bound=Handler)

MAX_ID_BYTES = 255
MAX_CONCURRENCY = 65_536

_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    # HTTP/2 pings find a dead server (or path) even while no task runs.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Every session dials afresh: no connection, and no reconnect backoff, shared with an earlier
    # channel to the same address.
    ("grpc.use_local_subchannel_pool", 1),
]

_current: contextvars.ContextVar[Optional[ActivityContext]] = contextvars.ContextVar("sagaflow_activity", default=None)


class ActivityError(Exception):
    """A failed attempt, as a handler reports it.

    `error_type` is what a saga's retry policy matches on (its non-retryable error types): keep it
    stable and machine-readable, such as `PaymentDeclined`. The message is for people. A retryable
    failure is retried under the step's policy; a non-retryable one fails the step at once, and the
    saga compensates.
    """

    INVALID_INPUT = "InvalidInput"
    INVALID_OUTPUT = "InvalidOutput"
    TIMEOUT = "StartToCloseTimeout"
    UNKNOWN_ACTIVITY = "UnknownActivityType"
    RESULT_TOO_LARGE = "ResultTooLarge"

    def __init__(self, error_type: str, message: str = "", *, retryable: bool = True) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message
        self.retryable = retryable


class ActivityContext:
    """Everything an attempt knows about itself, handed to the handler."""

    def __init__(self, task: worker_pb2.ActivityTask, worker: Worker) -> None:
        self.workflow_id: str = task.workflow_id
        self.workflow_type: str = task.workflow_type
        self.task_id: str = task.task_id
        self.activity_type: str = task.activity_type
        self.step: str = task.step
        self.attempt: int = task.attempt
        """The attempt number, starting at 1."""
        self.is_compensation: bool = task.compensation
        self.idempotency_key: str = task.idempotency_key
        """The same for every attempt of the step: apply the effect at most once per key."""
        self.correlation_id: str = task.correlation_id
        self.traceparent: Optional[str] = task.traceparent or None
        """The W3C traceparent of the scheduling span, if the server sent one."""
        self.start_to_close_timeout: Optional[float] = task.start_to_close_ms / 1000 if task.start_to_close_ms else None
        self.heartbeat_timeout: Optional[float] = task.heartbeat_ms / 1000 if task.heartbeat_ms else None
        loop = asyncio.get_running_loop()
        self.deadline: Optional[float] = (
            loop.time() + self.start_to_close_timeout if self.start_to_close_timeout else None
        )
        """When this attempt's budget runs out, on the event loop's clock (`loop.time()`)."""
        self._lease_token = task.lease_token
        self._worker = worker
        self.log = logging.LoggerAdapter(
            logging.getLogger("sagaflow.activity"),
            {
                "correlation_id": self.correlation_id,
                "workflow_id": self.workflow_id,
                "task_id": self.task_id,
                "activity_type": self.activity_type,
                "attempt": self.attempt,
            },
        )
        """A logger whose records carry the correlation id, workflow id, task id and attempt."""

    def heartbeat(self, details: Any = None) -> None:
        """Reports progress and proves the attempt is alive. Best effort: dropped while disconnected.

        `details` must be JSON-serializable."""
        self._worker._heartbeat(self, json.dumps(details))

    def outgoing_traceparent(self) -> Optional[str]:
        """A traceparent for calls this activity makes: the task's trace, with this attempt's span id
        (the one the Rust SDK uses, derived from the workflow and task ids)."""
        if not self.traceparent:
            return None
        parts = self.traceparent.split("-")
        if len(parts) != 4:
            return None
        return f"{parts[0]}-{parts[1]}-{_span_id_of(f'{self.workflow_id}/{self.task_id}'):016x}-{parts[3]}"

    def outgoing_metadata(self) -> list[tuple[str, str]]:
        """gRPC metadata (or HTTP headers) that carry the correlation id and trace onward."""
        metadata = [("x-correlation-id", self.correlation_id)] if self.correlation_id else []
        traceparent = self.outgoing_traceparent()
        if traceparent:
            metadata.append(("traceparent", traceparent))
        return metadata


def current_context() -> Optional[ActivityContext]:
    """The context of the activity running in the current asyncio task, if any."""
    return _current.get()


class CorrelationFilter(logging.Filter):
    """Adds `correlation_id`, `workflow_id` and `task_id` to every record logged from inside an
    activity (empty strings elsewhere), so that a format string can name them."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _current.get()
        for name in ("correlation_id", "workflow_id", "task_id"):
            if not hasattr(record, name):
                setattr(record, name, getattr(ctx, name, "") if ctx else "")
        return True


def _span_id_of(name: str) -> int:
    """FNV-1a 64, as `sagaflow_proto::trace_context::span_id_of`."""
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return max(h, 1)


@dataclass
class _Registration:
    handler: Handler
    auto_heartbeat: bool


@dataclass
class _Held:
    """A task from its arrival until its outcome is acknowledged."""

    ctx: ActivityContext
    task: Optional[asyncio.Task[None]]
    cancelled_by_server: bool = False
    timed_out: bool = False


Key = tuple[str, str]


class _Session:
    def __init__(self, call: Any, max_result_bytes: int, capacity: int) -> None:
        self.call = call
        self.max_result_bytes = max_result_bytes
        self.outstanding = 0
        self.queue: asyncio.Queue[worker_pb2.WorkerMessage] = asyncio.Queue(maxsize=capacity)
        self.broken = False
        # Set once the worker drained and is closing the stream: a task arriving now is not run.
        self.closing = False

    def send(self, message: worker_pb2.WorkerMessage) -> None:
        """Queues a message the protocol depends on. A full queue means the server stopped reading:
        the session is given up, and what it carried is re-sent on the next one."""
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.broken = True
            self.call.cancel()

    def send_heartbeat(self, message: worker_pb2.WorkerMessage) -> None:
        # Heartbeats are superseded by the next one: never let them crowd out outcomes.
        if self.queue.qsize() < self.queue.maxsize // 2:
            self.queue.put_nowait(message)


class Worker:
    """Connects to a server, runs the registered activities with a concurrency limit, and reports
    their outcomes.

    `server` is `host:port`, `http://host:port` or `https://host:port`, or several of them (the
    nodes of a cluster), comma-separated in one string or as a list. The worker connects to the
    first; each reconnect after a failed or lost session moves to the next one, round robin, so
    that a standby that took over is found. A blank entry raises ValueError. `tls` and `token`
    apply to every address.

        worker = Worker("127.0.0.1:50051")      # or "http://a:50051,http://b:50051"

        @worker.activity("inventory.reserve")
        async def reserve(ctx: ActivityContext, input: dict) -> dict:
            ...

        await worker.run()          # until SIGTERM/SIGINT (or worker.shutdown()), then drains
    """

    def __init__(
        self,
        server: Servers = "127.0.0.1:50051",
        *,
        token: Optional[str] = None,
        tls: TlsOption = None,
        worker_id: Optional[str] = None,
        max_concurrency: int = 32,
        drain_timeout: float = 30.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if not 1 <= max_concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"max_concurrency must be between 1 and {MAX_CONCURRENCY}, not {max_concurrency}")
        self.worker_id = worker_id or f"py-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        _check_id("worker_id", self.worker_id)
        self._servers = servers_of(server, tls)
        self._token = token
        self._tls = tls
        self._max = max_concurrency
        self._drain_timeout = drain_timeout
        self._backoff = (max(backoff_initial, 0.001), max(backoff_max, backoff_initial))
        self._connect_timeout = connect_timeout
        self._activities: dict[str, _Registration] = {}
        self._held: dict[Key, _Held] = {}
        self._unacked: dict[Key, worker_pb2.TaskOutcome] = {}
        self._leases: dict[Key, str] = {}
        self._session: Optional[_Session] = None
        self._draining: Optional[asyncio.Event] = None
        self._changed: Optional[asyncio.Event] = None
        # Set, on the loop's clock, when the drain starts; the drain must finish by then.
        self._drain_deadline: Optional[float] = None
        self._giving_up = False
        self._shutdown_early = False
        self._capacity = max_concurrency * 4 + 64

    # -- registration --------------------------------------------------------------------------

    def activity(self, activity_type: str, *, auto_heartbeat: bool = True) -> Callable[[H], H]:
        """Registers the decorated coroutine function as the handler of `activity_type`."""

        def decorate(handler: H) -> H:
            self.register(activity_type, handler, auto_heartbeat=auto_heartbeat)
            return handler

        return decorate

    def register(self, activity_type: str, handler: Handler, *, auto_heartbeat: bool = True) -> None:
        """Registers `handler(ctx, input) -> result` for `activity_type`.

        The handler is a coroutine function; its input is the task's parsed JSON and its result must
        be JSON-serializable. With `auto_heartbeat` (the default), the worker heartbeats for it at a
        third of the step's heartbeat timeout for as long as it runs, so a heartbeat timeout then
        means the worker (or its event loop) is stuck; without it, only `ctx.heartbeat()` counts.
        """
        _check_id("activity_type", activity_type)
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"the handler of {activity_type!r} must be an async function")
        if activity_type in self._activities:
            raise ValueError(f"activity type {activity_type!r} is registered twice")
        self._activities[activity_type] = _Registration(handler, auto_heartbeat)

    # -- running -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Asks a running worker to drain: no new tasks, the running ones finish and are acknowledged."""
        if self._draining is None:
            self._shutdown_early = True  # before run(): it drains at once
            return
        if not self._draining.is_set():
            log.info("draining: asking for no more tasks, finishing %d running", len(self._held))
            self._drain_deadline = asyncio.get_running_loop().time() + self._drain_timeout
            self._draining.set()
            self._wake()  # after set(): _wake only wakes a draining loop

    async def run(self, *, handle_signals: bool = True) -> None:
        """Runs until `shutdown()` (or, with `handle_signals`, SIGTERM or SIGINT), then drains.

        An unreachable server is not an error: the worker reconnects with backoff for as long as it
        runs, to the next of its addresses each time when it has several. Raises `DrainTimedOut` if
        the drain does not finish within `drain_timeout`."""
        if not self._activities:
            raise ValueError("no activity registered")
        loop = asyncio.get_running_loop()
        self._draining = asyncio.Event()
        self._changed = asyncio.Event()
        if self._shutdown_early:
            self.shutdown()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.shutdown)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):
                    log.debug("cannot handle signal %s on this loop or thread", sig)
        try:
            await self._serve()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _serve(self) -> None:
        delay = self._backoff[0]
        # Which address to dial: kept while a node serves, moved on past one that refuses or drops
        # the session (a standby, a node that died), as the Rust SDK's `Config::endpoint(attempt)`.
        attempt = 0
        while not self._drained():
            server = self._servers[attempt % len(self._servers)]
            channel = aio_channel(server, self._tls, _CHANNEL_OPTIONS)
            try:
                served = await self._session_once(worker_pb2_grpc.WorkerServiceStub(channel), server)
            finally:
                await channel.close()
            if served:
                delay = self._backoff[0]
            if self._drained():
                break
            attempt += 1
            pause = delay / 2 + random.uniform(0, delay / 2)  # "equal jitter": workers do not return in step
            delay = min(delay * 2, self._backoff[1])
            log.debug("reconnecting in %.2f s", pause)
            await self._offline(pause)
        log.info("drained; worker %s stopped", self.worker_id)

    def _give_up(self) -> None:
        self._giving_up = True
        running, unacked = len(self._held) - len(self._unacked), len(self._unacked)
        for held in self._held.values():
            if held.task is not None:
                held.task.cancel()
        log.warning("drain timed out; stopping %d running task(s)", running)
        raise DrainTimedOut(self._drain_timeout, running, unacked)

    async def _offline(self, pause: float) -> None:
        """Waits out a backoff pause; running tasks go on, and their outcomes wait for a session."""
        assert self._draining is not None and self._changed is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + pause
        while loop.time() < end and not self._drained():
            if self._drain_deadline is not None and loop.time() >= self._drain_deadline:
                self._give_up()
            self._changed.clear()
            until = end if self._drain_deadline is None else min(end, self._drain_deadline)
            try:
                await asyncio.wait_for(self._changed.wait(), max(until - loop.time(), 0))
            except asyncio.TimeoutError:
                pass

    async def _session_once(self, stub: worker_pb2_grpc.WorkerServiceStub, server: str) -> bool:
        """Opens one session with `server` (which `stub` reaches) and serves it until it ends. True if
        it got as far as `Registered`."""
        assert self._draining is not None and self._changed is not None
        loop = asyncio.get_running_loop()
        register = worker_pb2.Register(
            worker_id=self.worker_id,
            activity_types=sorted(self._activities),
            # Announce what is still held, so that a restarted server keeps those leases.
            held=[
                worker_pb2.TaskRef(workflow_id=k[0], task_id=k[1], lease_token=self._leases.get(k, ""))
                for k, h in self._held.items()
                if k not in self._unacked
            ],
        )
        call = stub.OpenSession(metadata=auth_metadata(self._token))
        try:
            await asyncio.wait_for(call.write(worker_pb2.WorkerMessage(register=register)), self._connect_timeout)
            first = await asyncio.wait_for(call.read(), self._connect_timeout)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError, grpc.aio.UsageError) as error:
            call.cancel()
            log.warning("cannot reach the orchestrator at %s: %s", server, _describe(error))
            return False
        if first is grpc.aio.EOF or first.WhichOneof("message") != "registered":
            call.cancel()
            log.warning("the orchestrator at %s did not answer Register with Registered; reconnecting", server)
            return False
        session = _Session(call, first.registered.max_result_bytes, self._capacity)
        self._session = session
        log.info("connected to the orchestrator at %s (session %s)", server, first.registered.session_id)
        writer = asyncio.ensure_future(self._write(session))
        try:
            for outcome in self._unacked.values():
                self._fit(outcome, session)
                session.send(worker_pb2.WorkerMessage(outcome=outcome))
            if self._unacked:
                log.info("re-sent %d unacknowledged outcome(s)", len(self._unacked))
            self._top_up()
            # One reader handles every message as it comes; this loop wakes only when the session
            # ends or the drain moves on, not once per message.
            reader = asyncio.ensure_future(self._read(session))
            while True:
                if self._drained():
                    await self._close(session, writer, reader)
                    return True
                self._changed.clear()
                changed = asyncio.ensure_future(self._changed.wait())
                deadline = self._drain_deadline
                timeout = None if deadline is None else max(deadline - loop.time(), 0)
                done, _ = await asyncio.wait({reader, changed, writer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if not done:
                    reader.cancel()
                    self._give_up()
                if writer in done or session.broken:
                    reader.cancel()
                    log.warning("the outbound stream to %s broke; reconnecting", server)
                    return True
                if reader in done:
                    log.warning("%s (%s); reconnecting", reader.result(), server)
                    return True
        finally:
            self._session = None
            writer.cancel()
            call.cancel()

    async def _read(self, session: _Session) -> str:
        """Handles the server's messages until the stream ends; returns why it ended."""
        while True:
            try:
                message = await session.call.read()
            except grpc.aio.AioRpcError as error:
                return f"disconnected from the orchestrator: {_describe(error)}"
            if message is grpc.aio.EOF:
                return "the orchestrator ended the stream"
            self._on_message(message)

    async def _write(self, session: _Session) -> None:
        while True:
            message = await session.queue.get()
            try:
                await session.call.write(message)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as error:
                log.debug("write failed: %s", _describe(error))
                return

    async def _close(self, session: _Session, writer: asyncio.Future[None], reader: asyncio.Future[str]) -> None:
        """Lets the queued messages out, closes our half, and waits briefly for the server to close its
        half, so that it sees a clean end rather than a reset. (Cancelling a pending read would cancel
        the whole call, so the reader is left to see the end.)"""
        session.closing = True
        try:
            while not session.queue.empty() and not writer.done():
                await asyncio.sleep(0.01)
            writer.cancel()
            await session.call.done_writing()
            await asyncio.wait_for(asyncio.shield(reader), 2.0)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.TimeoutError):
            pass

    # -- protocol ------------------------------------------------------------------------------

    def _wake(self) -> None:
        """Wakes the session loop, which cares about a finished task only while draining."""
        if self._changed is not None and self._draining is not None and self._draining.is_set():
            self._changed.set()

    def _drained(self) -> bool:
        return self._draining is not None and self._draining.is_set() and not self._held

    def _top_up(self) -> None:
        """Grants credit for every free slot, unless draining. While the server still holds credit for
        half the slots, the grant waits: one message then covers many tasks."""
        session = self._session
        assert self._draining is not None
        if session is None or self._draining.is_set() or session.outstanding >= (self._max + 1) // 2:
            return
        free = self._max - len(self._held) - session.outstanding
        if free > 0:
            session.outstanding += free
            session.send(worker_pb2.WorkerMessage(credit=worker_pb2.Credit(tasks=free)))

    def _on_message(self, message: worker_pb2.ServerMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "task":
            self._on_task(message.task)
        elif kind == "ack":
            self._on_ack(message.ack)
        elif kind == "task_cancelled":
            self._on_cancelled(message.task_cancelled)
        elif kind == "registered":
            log.warning("unexpected Registered in an open session; ignored")
        else:
            log.debug("unknown server message ignored")

    def _on_task(self, task: worker_pb2.ActivityTask) -> None:
        session = self._session
        assert session is not None
        if session.closing:
            # Credit granted before the drain, used after it: the lease expires and the task is reassigned.
            log.warning("task %s/%s arrived after the drain finished; not run", task.workflow_id, task.task_id)
            return
        if session.outstanding == 0:
            # Running it would break the limit this worker promised; its lease expires and it is reassigned.
            log.error("task %s/%s arrived beyond the credit granted; not running it", task.workflow_id, task.task_id)
            return
        session.outstanding -= 1
        key = (task.workflow_id, task.task_id)
        if key in self._held:
            log.warning("duplicate delivery of task %s/%s; ignored", *key)
            self._top_up()
            return
        ctx = ActivityContext(task, self)
        self._leases[key] = task.lease_token
        registration = self._activities.get(task.activity_type)
        if registration is None:
            ctx.log.warning("task for activity type %r, which this worker does not run", task.activity_type)
            self._held[key] = _Held(ctx, None)
            failure = ActivityError(
                ActivityError.UNKNOWN_ACTIVITY,
                f"worker {self.worker_id} does not run activity type {task.activity_type!r}",
                retryable=True,
            )
            self._record(key, _outcome(key, task.lease_token, failure))
            return
        held = _Held(ctx, None)
        self._held[key] = held
        held.task = asyncio.ensure_future(self._run_task(key, held, registration, task.input))
        self._top_up()

    async def _run_task(self, key: Key, held: _Held, registration: _Registration, text: str) -> None:
        """Runs one attempt in this task (one task per attempt), then records its outcome.

        A cancellation of this task comes from the server (`cancelled_by_server`), the attempt's
        budget (`timed_out`), or a drain given up (neither); a handler that swallows it and returns
        still has its result reported, and the server decides whether it came too late."""
        ctx = held.ctx
        _current.set(ctx)
        loop = asyncio.get_running_loop()
        result: Union[str, ActivityError]
        try:
            input = json.loads(text) if text else None
        except ValueError as error:
            result = ActivityError(ActivityError.INVALID_INPUT, str(error), retryable=False)
        else:
            timer: Optional[asyncio.TimerHandle] = None
            if ctx.start_to_close_timeout:

                def spent() -> None:
                    if not held.cancelled_by_server and held.task is not None:
                        held.timed_out = True
                        held.task.cancel()

                timer = loop.call_later(ctx.start_to_close_timeout, spent)
            pulse = None
            if registration.auto_heartbeat and ctx.heartbeat_timeout:
                pulse = asyncio.ensure_future(self._pulse(ctx, ctx.heartbeat_timeout / 3))
            try:
                value = await registration.handler(ctx, input)
            except asyncio.CancelledError:
                if held.cancelled_by_server:
                    ctx.log.info("activity stopped: the orchestrator cancelled it")
                    self._forget(key)
                    return
                if self._giving_up:
                    raise  # a drain given up: nothing to report, the server retries the attempt
                result = (
                    ActivityError(
                        ActivityError.TIMEOUT,
                        f"the attempt ran past its start-to-close budget of {ctx.start_to_close_timeout} s",
                    )
                    if held.timed_out
                    # The handler raised CancelledError on its own: a failure like any other.
                    else ActivityError("Cancelled", "the handler raised CancelledError")
                )
            except ActivityError as error:
                result = error
            except Exception as error:  # a bug in the handler: retryable, as the Rust SDK treats a panic
                ctx.log.exception("activity raised %s", type(error).__name__)
                result = ActivityError(type(error).__name__, str(error))
            else:
                try:
                    result = json.dumps(value)
                except (TypeError, ValueError) as error:
                    result = ActivityError(ActivityError.INVALID_OUTPUT, str(error), retryable=False)
            finally:
                if timer is not None:
                    timer.cancel()
                if pulse is not None:
                    pulse.cancel()
        if isinstance(result, ActivityError):
            ctx.log.info("activity failed: %s (retryable=%s)", result, result.retryable)
        self._record(key, _outcome(key, self._leases.get(key, ""), result))

    async def _pulse(self, ctx: ActivityContext, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self._heartbeat(ctx, "null")

    def _heartbeat(self, ctx: ActivityContext, details: str) -> None:
        key = (ctx.workflow_id, ctx.task_id)
        session = self._session
        if session is None or key not in self._held or key in self._unacked:
            return
        session.send_heartbeat(
            worker_pb2.WorkerMessage(
                heartbeat=worker_pb2.Heartbeat(
                    workflow_id=key[0], task_id=key[1], details=details, lease_token=ctx._lease_token
                )
            )
        )

    def _record(self, key: Key, outcome: worker_pb2.TaskOutcome) -> None:
        """Keeps an outcome until it is acknowledged, and sends it if connected."""
        self._unacked[key] = outcome
        session = self._session
        if session is not None:
            self._fit(outcome, session)
            session.send(worker_pb2.WorkerMessage(outcome=outcome))
        self._wake()

    def _fit(self, outcome: worker_pb2.TaskOutcome, session: _Session) -> None:
        if outcome.WhichOneof("outcome") != "completed" or not session.max_result_bytes:
            return
        size = len(outcome.completed.encode())
        if size <= session.max_result_bytes:
            return
        log.warning(
            "the result of %s/%s is %d bytes, more than the orchestrator takes (%d); reporting the attempt failed",
            outcome.workflow_id, outcome.task_id, size, session.max_result_bytes,
        )
        outcome.failed.CopyFrom(
            worker_pb2.TaskFailure(
                error_type=ActivityError.RESULT_TOO_LARGE,
                message=f"the result is {size} bytes; the orchestrator takes at most {session.max_result_bytes}",
                retryable=False,
            )
        )

    def _on_ack(self, ack: worker_pb2.OutcomeAck) -> None:
        key = (ack.workflow_id, ack.task_id)
        if self._unacked.pop(key, None) is None:
            # An outcome re-sent after a reconnect can be acknowledged twice.
            log.debug("acknowledgement for an outcome not held; ignored")
            return
        held = self._held.get(key)
        if ack.refused:
            # Refused for good: sending it again would be refused again.
            log.error("the orchestrator refused the outcome of %s/%s: %s", *key, ack.refused)
        elif not ack.accepted:
            log.info("outcome of %s/%s recorded but not applied: the attempt was late or a duplicate", *key)
        elif held is not None:
            held.ctx.log.debug("outcome acknowledged")
        self._forget(key)

    def _forget(self, key: Key) -> None:
        self._held.pop(key, None)
        self._leases.pop(key, None)
        self._unacked.pop(key, None)
        self._top_up()
        self._wake()

    def _on_cancelled(self, cancelled: worker_pb2.TaskCancelled) -> None:
        key = (cancelled.workflow_id, cancelled.task_id)
        held = self._held.get(key)
        if held is None or held.task is None or key in self._unacked:
            log.debug("cancellation of a task not running; ignored")
            return
        held.ctx.log.info("the orchestrator cancelled the task (%s); cancelling its handler", cancelled.reason)
        if held.timed_out or held.cancelled_by_server:
            return  # already cancelled once: a handler that ignored it is not asked again
        held.cancelled_by_server = True
        held.task.cancel()


def _check_id(what: str, value: str) -> None:
    if not value or len(value.encode()) > MAX_ID_BYTES:
        raise ValueError(f"{what} must be 1 to {MAX_ID_BYTES} UTF-8 bytes: {value!r}")


def _outcome(key: Key, lease_token: str, result: Union[str, ActivityError]) -> worker_pb2.TaskOutcome:
    if isinstance(result, ActivityError):
        return worker_pb2.TaskOutcome(
            workflow_id=key[0],
            task_id=key[1],
            lease_token=lease_token,
            failed=worker_pb2.TaskFailure(error_type=result.error_type, message=result.message, retryable=result.retryable),
        )
    return worker_pb2.TaskOutcome(workflow_id=key[0], task_id=key[1], lease_token=lease_token, completed=result)


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__
