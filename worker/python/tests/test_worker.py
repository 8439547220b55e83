"""Worker protocol details against a real server: limits, reconnects and drain, in-process."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
from harness import ServerProcess

from sagaflow import (
    ActivityContext,
    ActivityError,
    Client,
    DrainTimedOut,
    PermissionDenied,
    Unauthenticated,
    Worker,
    WorkflowStatus,
    event_attributes,
    event_type,
)
from sagaflow._channel import servers_of


def events_of(history: list[Any], name: str) -> list[Any]:
    return [event_attributes(e) for e in history if event_type(e) == name]


async def run_worker(worker: Worker) -> asyncio.Task[None]:
    return asyncio.ensure_future(worker.run(handle_signals=False))


async def stop(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.shutdown()
    await asyncio.wait_for(task, 20)


async def test_a_result_larger_than_the_server_takes_fails_as_result_too_large(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, ("--max-payload-bytes", "1024"))
    try:
        worker = Worker(server.url, worker_id="big")

        @worker.activity("t.big")
        async def big(ctx: ActivityContext, input: Any) -> Any:
            return {"blob": "x" * int(input["input"]["bytes"])}

        task = await run_worker(worker)
        async with Client(server.url) as client:
            outcome = await client.execute("py.big", {"bytes": 4096}, timeout=20)
            assert outcome.status is WorkflowStatus.FAILED, outcome
            failed = events_of([e async for e in client.history(outcome.workflow_id)], "ActivityFailed")
            assert [(f.error_type, f.retryable) for f in failed] == [("ResultTooLarge", False)]
            # The stream survived: the same session serves a result that fits.
            small = await client.execute("py.big", {"bytes": 10}, timeout=20)
            assert small.status is WorkflowStatus.COMPLETED, small
        await stop(worker, task)
    finally:
        server.stop()


async def test_never_holds_more_tasks_than_its_concurrency(server: ServerProcess) -> None:
    worker = Worker(server.url, max_concurrency=2)
    running, most = 0, 0
    release = asyncio.Event()

    @worker.activity("t.echo")
    async def echo(ctx: ActivityContext, input: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        return {}

    task = await run_worker(worker)
    async with Client(server.url) as client:
        started = [await client.start("py.once", {"i": i}) for i in range(6)]

        async def two_running() -> None:
            while running < 2:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(two_running(), 10)
        described = [await client.describe(s.workflow_id) for s in started]
        leased = [p for d in described for p in d.pending if p.state == "LEASED"]
        assert len(leased) == 2, leased
        release.set()
        for s in started:
            assert (await client.wait(s.workflow_id, timeout=20)).status is WorkflowStatus.COMPLETED
    assert most == 2
    await stop(worker, task)


async def test_outcomes_made_while_the_server_is_down_are_sent_after_it_returns(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    url = server.url
    gate = asyncio.Event()
    worker = Worker(url, backoff_max=0.3)

    @worker.activity("t.echo")
    async def echo(ctx: ActivityContext, input: Any) -> Any:
        await gate.wait()
        return {"key": ctx.idempotency_key}

    task = await run_worker(worker)
    async with Client(url) as client:
        started = await client.start("py.once", {})

        async def leased() -> None:
            while not any(p.state == "LEASED" for p in (await client.describe(started.workflow_id)).pending):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(leased(), 10)
    server.stop()
    gate.set()  # finishes while the server is down: the outcome waits for the next session
    # Same data and port, so that the worker finds it again.
    restarted = ServerProcess(tmp_path, listen=url.removeprefix("http://"))
    try:
        async with Client(url) as client:
            outcome = await client.wait(started.workflow_id, timeout=30)
            assert outcome.status is WorkflowStatus.COMPLETED, outcome
            completed = events_of([e async for e in client.history(started.workflow_id)], "ActivityCompleted")
            assert len(completed) == 1
        await stop(worker, task)
    finally:
        restarted.stop()


async def test_a_drain_that_runs_past_its_timeout_raises_drain_timed_out(server: ServerProcess) -> None:
    worker = Worker(server.url, drain_timeout=0.5)
    stopped = asyncio.Event()

    @worker.activity("t.echo")
    async def stuck(ctx: ActivityContext, input: Any) -> Any:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    task = await run_worker(worker)
    async with Client(server.url) as client:
        started = await client.start("py.once", {})

        async def leased() -> None:
            while not any(p.state == "LEASED" for p in (await client.describe(started.workflow_id)).pending):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(leased(), 10)
    worker.shutdown()
    with pytest.raises(DrainTimedOut) as raised:
        await asyncio.wait_for(task, 10)
    assert raised.value.running == 1
    await asyncio.wait_for(stopped.wait(), 5)  # the handler was told to stop


async def test_bad_registrations_are_refused_at_once() -> None:
    worker = Worker("127.0.0.1:1")

    def not_async(ctx: ActivityContext, input: Any) -> Any:
        return None

    with pytest.raises(TypeError):
        worker.register("t.sync", not_async)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        worker.register("x" * 256, _noop)
    worker.register("t.ok", _noop)
    with pytest.raises(ValueError):
        worker.register("t.ok", _noop)
    with pytest.raises(ValueError):
        Worker("127.0.0.1:1", max_concurrency=0)


async def _noop(ctx: ActivityContext, input: Any) -> Any:
    return None


def dead_address() -> str:
    """A loopback address nothing listens on: a port the OS handed out, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_server_addresses_split_on_commas_and_blank_entries_are_refused() -> None:
    assert servers_of("127.0.0.1:1", None) == ["127.0.0.1:1"]
    assert servers_of(" http://a:1 ,https://b:2", None) == ["http://a:1", "https://b:2"]
    assert servers_of(["http://a:1", "b:2,c:3"], None) == ["http://a:1", "b:2", "c:3"]
    for blank in ("", " ", "a:1,", ",a:1", "a:1,,b:2", "a:1, ,b:2", ["a:1", ""], ["a:1", " , "]):
        with pytest.raises(ValueError, match="blank entry"):
            Worker(blank)
    with pytest.raises(ValueError, match="no server address"):
        Worker([])
    with pytest.raises(TypeError):
        Worker(["a:1", 2])  # type: ignore[list-item]
    # Each entry is checked on its own, as a lone address is.
    with pytest.raises(ValueError, match="not a server address"):
        Worker("http://a:1,http://b:2/path")
    with pytest.raises(ValueError, match="https:// address but tls=False"):
        Worker("http://a:1,https://b:2", tls=False)
    with pytest.raises(ValueError, match="blank entry"):
        Client("http://a:1,,http://b:2")


async def _echo(ctx: ActivityContext, input: Any) -> Any:
    return {"attempt": ctx.attempt}


async def test_a_worker_moves_past_an_address_that_does_not_answer(
    server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sagaflow.worker")
    dead = dead_address()
    worker = Worker(f"{dead},{server.url}", worker_id="rotating", backoff_max=0.2)
    worker.register("t.echo", _echo)
    task = await run_worker(worker)
    async with Client(server.url) as client:
        outcome = await client.execute("py.once", {}, timeout=20)
    await stop(worker, task)
    assert outcome.status is WorkflowStatus.COMPLETED and outcome.result["work"] == {"attempt": 1}, outcome
    messages = [r.getMessage() for r in caplog.records if r.name == "sagaflow.worker"]
    refused = next(i for i, m in enumerate(messages) if m.startswith(f"cannot reach the orchestrator at {dead}:"))
    connected = next(i for i, m in enumerate(messages) if m.startswith(f"connected to the orchestrator at {server.url} "))
    assert refused < connected, messages


async def test_a_lost_session_moves_the_worker_to_the_next_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sagaflow.worker")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = ServerProcess(tmp_path / "a"), ServerProcess(tmp_path / "b")
    try:
        worker = Worker([a.url, b.url], worker_id="failing-over", backoff_max=0.2)
        worker.register("t.echo", _echo)
        task = await run_worker(worker)
        async with Client(a.url) as client:
            assert (await client.execute("py.once", {}, timeout=20)).status is WorkflowStatus.COMPLETED
        a.process.kill()  # the node dies: the worker's session with it is lost
        a.process.wait()
        async with Client(b.url) as client:
            assert (await client.execute("py.once", {}, timeout=20)).status is WorkflowStatus.COMPLETED
        await stop(worker, task)
        connected = [r.getMessage().split()[5] for r in caplog.records if r.getMessage().startswith("connected to the orchestrator at ")]
        assert connected == [a.url, b.url], connected
    finally:
        a.stop()
        b.stop()


async def test_activity_logs_carry_the_correlation_id_and_the_trace_goes_on(
    server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(server.url)
    seen: dict[str, Any] = {}

    @worker.activity("t.echo")
    async def echo(ctx: ActivityContext, input: Any) -> Any:
        ctx.log.info("serving")
        seen["ctx"] = ctx
        return {}

    caplog.set_level(logging.INFO, logger="sagaflow.activity")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    task = await run_worker(worker)
    async with Client(server.url) as client:
        outcome = await client.execute(
            "py.once", {}, correlation_id="corr-42", traceparent=f"00-{trace_id}-00f067aa0ba902b7-01", timeout=20
        )
        assert outcome.status is WorkflowStatus.COMPLETED
    await stop(worker, task)
    serving = [r for r in caplog.records if r.getMessage() == "serving"]
    assert [getattr(r, "correlation_id", None) for r in serving] == ["corr-42"]
    ctx: ActivityContext = seen["ctx"]
    # The client's trace reaches the activity, and goes on under the attempt's own span.
    assert ctx.traceparent is not None and ctx.traceparent.split("-")[1] == trace_id
    outgoing = dict(ctx.outgoing_metadata())
    assert outgoing["x-correlation-id"] == "corr-42"
    version, trace, span, flags = outgoing["traceparent"].split("-")
    assert (version, trace) == ("00", trace_id) and span != ctx.traceparent.split("-")[2]
    assert span == f"{_fnv1a(f'{ctx.workflow_id}/{ctx.task_id}'):016x}", "the span id the Rust SDK gives the attempt"


def _fnv1a(text: str) -> int:
    h = 0xCBF29CE484222325
    for b in text.encode():
        h = ((h ^ b) * 0x100000001B3) % 2**64
    return h


async def test_explicit_heartbeats_keep_an_attempt_alive(server: ServerProcess) -> None:
    worker = Worker(server.url)

    @worker.activity("t.steady", auto_heartbeat=False)
    async def steady(ctx: ActivityContext, input: Any) -> Any:
        assert ctx.heartbeat_timeout is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + ctx.heartbeat_timeout * 4
        while loop.time() < end:
            ctx.heartbeat({"left_s": end - loop.time()})
            await asyncio.sleep(ctx.heartbeat_timeout / 4)
        return {"attempt": ctx.attempt}

    task = await run_worker(worker)
    async with Client(server.url) as client:
        outcome = await client.execute("py.steady", {}, timeout=20)
        timed_out = events_of([e async for e in client.history(outcome.workflow_id)], "ActivityTimedOut")
    await stop(worker, task)
    assert outcome.status is WorkflowStatus.COMPLETED and outcome.result["work"] == {"attempt": 1}, outcome
    assert timed_out == []


async def test_an_activity_error_keeps_its_type_and_retryability(server: ServerProcess) -> None:
    worker = Worker(server.url)
    calls = 0

    @worker.activity("t.echo")
    async def flaky(ctx: ActivityContext, input: Any) -> Any:
        nonlocal calls
        calls += 1
        if ctx.attempt < 3:
            raise ActivityError("Flaky", f"attempt {ctx.attempt}", retryable=True)
        return {"attempt": ctx.attempt}

    task = await run_worker(worker)
    async with Client(server.url) as client:
        outcome = await client.execute("py.once", {}, timeout=20)
        history = [e async for e in client.history(outcome.workflow_id)]
    await stop(worker, task)
    assert outcome.result["work"] == {"attempt": 3} and calls == 3
    assert [(f.error_type, f.retryable) for f in events_of(history, "ActivityFailed")] == [("Flaky", True)] * 2
    json.dumps(outcome.result)


async def test_tokens_carry_the_worker_and_the_client_through_a_server_with_auth(tmp_path: Path) -> None:
    import hashlib

    tokens = {
        "client": ("shop", "client", "client-token-aaaaaaaaaaaaaaaa", None),
        "worker": ("py-workers", "worker", "worker-token-bbbbbbbbbbbbbbbb", ["t.*"]),
    }
    entries = []
    for name, role, token, queues in tokens.values():
        entry: dict[str, Any] = {"name": name, "role": role, "sha256": hashlib.sha256(token.encode()).hexdigest()}
        if queues:
            entry["queues"] = queues
        entries.append(entry)
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"tokens": entries}))
    server = ServerProcess(tmp_path, ("--auth-file", str(auth)))
    try:
        worker = Worker(server.url, worker_id="authed", token=tokens["worker"][2])

        @worker.activity("t.echo")
        async def echo(ctx: ActivityContext, input: Any) -> Any:
            return {"attempt": ctx.attempt}

        task = await run_worker(worker)
        async with Client(server.url, token=tokens["client"][2]) as client:
            outcome = await client.execute("py.once", {}, timeout=20)
        assert outcome.status is WorkflowStatus.COMPLETED, outcome
        # The client's ids live in its namespace on a server with auth.
        assert outcome.workflow_id and outcome.result["work"] == {"attempt": 1}, outcome
        async with Client(server.url) as anonymous:
            with pytest.raises(Unauthenticated):
                await anonymous.describe(outcome.workflow_id)
        async with Client(server.url, token=tokens["client"][2]) as client:
            with pytest.raises(PermissionDenied):
                await client.cancel(outcome.workflow_id, reason="not a client's to do")
        await stop(worker, task)
    finally:
        server.stop()
