"""The client against a real server: every call, and errors raised as typed exceptions."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from harness import ServerProcess

from sagaflow import (
    AlreadyExists,
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SyncClient,
    Unavailable,
    WorkflowStatus,
    WorkflowTimedOut,
    event_attributes,
    event_type,
)


async def until(probe: Any, timeout: float = 10.0) -> Any:
    async def poll() -> Any:
        while True:
            value = await probe()
            if value:
                return value
            await asyncio.sleep(0.02)

    return await asyncio.wait_for(poll(), timeout)


async def test_start_is_idempotent_by_request_id_and_refuses_other_input(client: Client) -> None:
    first = await client.start("py.once", {"n": 1}, request_id="same")
    again = await client.start("py.once", {"n": 1}, request_id="same")
    assert (first.already_started, again.already_started) == (False, True)
    assert again.workflow_id == first.workflow_id
    with pytest.raises(AlreadyExists) as raised:
        await client.start("py.once", {"n": 2}, request_id="same")
    assert raised.value.details


async def test_unknown_workflows_and_types_raise_typed_errors(client: Client) -> None:
    with pytest.raises(NotFound):
        await client.describe("no-such-workflow")
    with pytest.raises(NotFound):
        await client.wait("no-such-workflow", timeout=1)
    with pytest.raises(InvalidArgument):
        await client.start("no.such.type", {})


async def test_wait_raises_when_the_workflow_does_not_end_in_time(client: Client) -> None:
    started = await client.start("py.once", {})  # no worker: it cannot end
    with pytest.raises(WorkflowTimedOut):
        await client.wait(started.workflow_id, timeout=0.3)


async def test_signal_lets_a_gated_saga_finish_and_describe_shows_its_progress(client: Client, workers: Any) -> None:
    workers.start("w1")
    started = await client.start("py.gated", {}, labels={"team": "py"})

    async def waiting_for_signal() -> bool:
        return (await client.describe(started.workflow_id)).summary.current_step == "approve"

    await until(waiting_for_signal)
    described = await client.describe(started.workflow_id)
    assert described.status is WorkflowStatus.RUNNING and "reserve" in described.step_results
    seq = await client.signal(started.workflow_id, "approve", {"by": "test"})
    assert seq > 0
    outcome = await client.wait(started.workflow_id, timeout=20)
    assert outcome.status is WorkflowStatus.COMPLETED, outcome
    received = [event_attributes(e) for e in [e async for e in client.history(started.workflow_id)] if event_type(e) == "SignalReceived"]
    assert [r.name for r in received] == ["approve"]


async def test_cancel_compensates_and_terminate_stops_at_once(client: Client, workers: Any) -> None:
    workers.start("w1")
    to_cancel = await client.start("py.gated", {})
    to_terminate = await client.start("py.gated", {})
    for started in (to_cancel, to_terminate):

        async def gated(workflow_id: str = started.workflow_id) -> bool:
            return (await client.describe(workflow_id)).summary.current_step == "approve"

        await until(gated)
    await client.cancel(to_cancel.workflow_id, "changed my mind")
    await client.terminate(to_terminate.workflow_id, "operator says stop")
    cancelled = await client.wait(to_cancel.workflow_id, timeout=20)
    terminated = await client.wait(to_terminate.workflow_id, timeout=20)
    assert cancelled.status is WorkflowStatus.CANCELLED, cancelled
    assert terminated.status is WorkflowStatus.TERMINATED and "operator says stop" in terminated.reason
    undo = [e async for e in client.history(to_cancel.workflow_id) if event_type(e) == "ActivityScheduled" and event_attributes(e).compensation]
    assert [event_attributes(e).activity_type for e in undo] == ["t.undo"]
    with pytest.raises(FailedPrecondition):
        await client.cancel(to_terminate.workflow_id, "too late")


async def test_history_iterates_every_page_in_order(client: Client, workers: Any) -> None:
    workers.start("w1")
    outcome = await client.execute("py.compensate", {}, timeout=30)
    whole = [e.seq async for e in client.history(outcome.workflow_id, page_size=1000)]
    paged = [e.seq async for e in client.history(outcome.workflow_id, page_size=2)]
    assert len(whole) > 4 and paged == whole == list(range(1, len(whole) + 1))


async def test_list_filters_by_type_status_and_label_across_pages(client: Client, workers: Any) -> None:
    workers.start("w1")
    done = [await client.execute("py.once", {"i": i}, labels={"batch": "b1"}) for i in range(3)]
    await client.start("py.gated", {}, labels={"batch": "b1"})
    listed = [s async for s in client.list(workflow_type="py.once", statuses=[WorkflowStatus.COMPLETED], page_size=2)]
    assert sorted(s.workflow_id for s in listed) == sorted(o.workflow_id for o in done)
    labelled = [s async for s in client.list(labels={"batch": "b1"}, page_size=1)]
    assert len(labelled) == 4 and all(s.labels["batch"] == "b1" for s in labelled)


def test_the_sync_client_makes_the_same_calls(server: ServerProcess) -> None:
    request_id = str(uuid.uuid4())
    with SyncClient(server.url) as client:
        started = client.start("py.once", {}, request_id=request_id)
        assert client.start("py.once", {}, request_id=request_id).already_started
        with pytest.raises(AlreadyExists):
            client.start("py.once", {"other": True}, request_id=request_id)
        assert client.describe(started.workflow_id).status is WorkflowStatus.RUNNING
        assert [event_type(e) for e in client.history(started.workflow_id)][0] == "WorkflowStarted"
        assert [s.workflow_id for s in client.list(workflow_type="py.once")] == [started.workflow_id]
        client.terminate(started.workflow_id, "done")
        assert client.wait(started.workflow_id, timeout=10).status is WorkflowStatus.TERMINATED
        with pytest.raises(NotFound):
            client.get_checkout("no-such-checkout")


async def test_a_deleted_workflow_is_read_back_from_the_archive(tmp_path: Any) -> None:
    server = ServerProcess(tmp_path, extra=("--archive-dir", str(tmp_path / "archive")))
    try:
        async with Client(server.url) as client:
            started = await client.start("py.gated", {})
            with pytest.raises(FailedPrecondition):
                await client.delete(started.workflow_id)
            await client.terminate(started.workflow_id, "done with it")
            live = [(e.seq, event_type(e)) async for e in client.history(started.workflow_id)]
            await client.delete(started.workflow_id)
            with pytest.raises(NotFound):
                await client.describe(started.workflow_id)
            archived = [(e.seq, event_type(e)) async for e in client.history(started.workflow_id, archived=True)]
            assert archived == live and live[-1][1] == "WorkflowTerminated"
    finally:
        server.stop()


def _dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_a_client_of_several_nodes_uses_the_first_that_connects(server: ServerProcess) -> None:
    dead = _dead_address()
    async with Client([dead, server.url]) as client:
        started = await client.start("py.gated", {})
        assert (await client.describe(started.workflow_id)).status is WorkflowStatus.RUNNING
    with SyncClient(f"{dead},{server.url}") as sync:
        assert sync.describe(started.workflow_id).status is WorkflowStatus.RUNNING
    async with Client(f"{dead},{_dead_address()}", connect_timeout=5) as nowhere:
        with pytest.raises(Unavailable, match="no server of"):
            await nowhere.describe(started.workflow_id)


async def test_a_client_of_several_nodes_chooses_again_when_its_node_is_lost(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = ServerProcess(tmp_path / "a"), ServerProcess(tmp_path / "b")
    try:
        async with Client(f"{a.url},{b.url}") as client:
            started = await client.start("py.gated", {})  # on a, the first that connects
            a.process.kill()
            a.process.wait()
            try:
                await client.describe(started.workflow_id)
            except (Unavailable, NotFound):
                pass  # the loss may show on this call (never re-sent); it reached b if it did not
            with pytest.raises(NotFound):  # b, another store, never heard of it
                await client.describe(started.workflow_id)
    finally:
        a.stop()
        b.stop()


class _NotServing(grpc.GenericRpcHandler):
    """A node that listens but answers every call UNAVAILABLE, as one stepping down does."""

    def __init__(self) -> None:
        self.calls = 0

    def service(self, handler_call_details: Any) -> Any:
        async def refuse(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not serving")

        return grpc.unary_unary_rpc_method_handler(refuse)


async def test_a_client_of_several_nodes_moves_on_from_a_node_that_answers_unavailable(server: ServerProcess) -> None:
    refusing = _NotServing()
    listener = grpc.aio.server()
    listener.add_generic_rpc_handlers((refusing,))
    port = listener.add_insecure_port("127.0.0.1:0")
    await listener.start()
    try:
        async with Client([f"http://127.0.0.1:{port}", server.url]) as client:
            with pytest.raises(Unavailable, match="not serving"):
                await client.start("py.gated", {})  # never re-sent: the caller decides
            started = await client.start("py.gated", {})  # the next call goes to the next node
            assert (await client.describe(started.workflow_id)).status is WorkflowStatus.RUNNING
        assert refusing.calls == 1
    finally:
        await listener.stop(None)
