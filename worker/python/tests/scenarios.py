"""The worker behaviour scenarios, written once. Each runs against a real `sagaflow server`, with the
worker under test as a process (`Workers.start`), and checks the history and the worker's journal.

`SCENARIOS` is the shared list: test_scenarios.py runs every entry against every SDK it knows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Journal

from sagaflow import Client, WorkflowStatus, event_attributes, event_type


ALL_SDKS = ("python", "rust")


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Client, Any, Journal, Path], Awaitable[None]]
    sdks: tuple[str, ...] = ALL_SDKS
    """The SDKs it applies to; `why_not` says why one is left out."""
    why_not: str = ""


async def events(client: Client, workflow_id: str) -> list[Any]:
    return [e async for e in client.history(workflow_id)]


def of_type(history: list[Any], name: str) -> list[Any]:
    return [event_attributes(e) for e in history if event_type(e) == name]


async def a_task_completed_once(client: Client, workers: Any, journal: Journal, tmp: Path) -> None:
    workers.start("w1")
    outcome = await client.execute("py.once", {"n": 1}, request_id=f"r-{uuid.uuid4()}", correlation_id="corr-once")
    assert outcome.status is WorkflowStatus.COMPLETED, outcome
    history = await events(client, outcome.workflow_id)
    scheduled = of_type(history, "ActivityScheduled")
    assert len(scheduled) == 1 and len(of_type(history, "ActivityStarted")) == 1
    assert len(of_type(history, "ActivityCompleted")) == 1
    runs = journal.entries(workflow_id=outcome.workflow_id, event="started")
    assert len(runs) == 1, runs
    # The context gives the step's key and the request's correlation id; the result made it back.
    assert runs[0]["key"] == scheduled[0].idempotency_key
    assert runs[0]["correlation_id"] == "corr-once"
    assert outcome.result["work"] == {"key": scheduled[0].idempotency_key, "attempt": 1}, outcome.result


async def a_killed_worker_s_task_is_retried_with_the_same_key(
    client: Client, workers: Any, journal: Journal, tmp: Path
) -> None:
    doomed = workers.start("doomed")
    started = await client.start("py.killed", {})
    first = await journal.wait_for(workflow_id=started.workflow_id, event="started", attempt=1)
    doomed.kill9()
    workers.start("rescuer")
    outcome = await client.wait(started.workflow_id, timeout=30)
    assert outcome.status is WorkflowStatus.COMPLETED, outcome
    done = journal.entries(workflow_id=started.workflow_id, event="completed")
    assert [d["worker_id"] for d in done] == ["rescuer"], done
    assert done[0]["attempt"] > 1 and done[0]["key"] == first["key"]
    timed_out = of_type(await events(client, started.workflow_id), "ActivityTimedOut")
    assert [t.task_id for t in timed_out] == [first["task_id"]]


async def a_silent_attempt_times_out_on_heartbeat(client: Client, workers: Any, journal: Journal, tmp: Path) -> None:
    workers.start("w1")
    outcome = await client.execute("py.heartbeat", {}, timeout=30)
    assert outcome.status is WorkflowStatus.COMPLETED, outcome
    timed_out = of_type(await events(client, outcome.workflow_id), "ActivityTimedOut")
    assert [t.timeout_type for t in timed_out] == ["HEARTBEAT"], timed_out
    # The server's cancellation reached the silent coroutine.
    await journal.wait_for(workflow_id=outcome.workflow_id, event="cancelled", attempt=1)
    assert outcome.result["work"] == {"attempt": 2}


async def automatic_heartbeats_keep_a_long_attempt_alive(
    client: Client, workers: Any, journal: Journal, tmp: Path
) -> None:
    workers.start("w1")
    outcome = await client.execute("py.steady", {}, timeout=30)
    assert outcome.status is WorkflowStatus.COMPLETED, outcome
    assert of_type(await events(client, outcome.workflow_id), "ActivityTimedOut") == []
    assert outcome.result["work"] == {"attempt": 1}


async def a_drain_finishes_the_running_task_and_takes_no_new_one(
    client: Client, workers: Any, journal: Journal, tmp: Path
) -> None:
    worker = workers.start("draining", max_concurrency=1)
    release = tmp / "release"
    first = await client.start("py.drain", {"release": str(release)})
    await journal.wait_for(workflow_id=first.workflow_id, event="started")
    worker.sigterm()
    second = await client.start("py.drain", {"release": str(release)})

    async def until_queued() -> None:
        while not any(p.state == "QUEUED" for p in (await client.describe(second.workflow_id)).pending):
            await asyncio.sleep(0.02)

    # The second task waits for a worker before the first may finish: the draining one has a free
    # slot's worth of time to (wrongly) ask for it.
    await asyncio.wait_for(until_queued(), 10)
    release.touch()
    assert await worker.exited() == 0
    outcome = await client.wait(first.workflow_id, timeout=10)
    assert outcome.status is WorkflowStatus.COMPLETED and outcome.result["work"] == {"attempt": 1}, outcome
    assert journal.entries(workflow_id=second.workflow_id) == []
    described = await client.describe(second.workflow_id)
    assert described.status is WorkflowStatus.RUNNING
    assert [p.state for p in described.pending] == ["QUEUED"]


async def a_non_retryable_error_compensates(client: Client, workers: Any, journal: Journal, tmp: Path) -> None:
    workers.start("w1")
    outcome = await client.execute("py.compensate", {}, timeout=30)
    assert outcome.status is WorkflowStatus.COMPENSATED, outcome
    history = await events(client, outcome.workflow_id)
    failed = of_type(history, "ActivityFailed")
    assert [(f.error_type, f.retryable) for f in failed] == [("CardDeclined", False)]
    assert len(journal.entries(workflow_id=outcome.workflow_id, activity_type="t.decline")) == 1
    undone = journal.entries(workflow_id=outcome.workflow_id, activity_type="t.undo")
    assert len(undone) == 1 and undone[0]["compensation"] is True


async def an_outcome_after_a_timeout_is_ignored(client: Client, workers: Any, journal: Journal, tmp: Path) -> None:
    workers.start("w1")
    started = await client.start("py.late", {})
    outcome = await client.wait(started.workflow_id, timeout=30)
    assert outcome.status is WorkflowStatus.COMPLETED and outcome.result["work"] == {"attempt": 2}, outcome
    late = await journal.wait_for(workflow_id=started.workflow_id, event="completed", attempt=1)

    async def until_ignored() -> list[Any]:
        while True:
            found = of_type(await events(client, started.workflow_id), "CompletionIgnored")
            if found:
                return found
            await asyncio.sleep(0.02)

    recorded = await asyncio.wait_for(until_ignored(), 10)
    assert [r.task_id for r in recorded] == [late["task_id"]], recorded
    # The late result changed nothing: attempt 1's result is not the step's.
    assert (await client.describe(started.workflow_id)).step_results["work"] == {"attempt": 2}


SCENARIOS = [
    Scenario("a task completed once", a_task_completed_once),
    Scenario("a worker killed mid-activity: retried with the same idempotency key", a_killed_worker_s_task_is_retried_with_the_same_key),
    Scenario("heartbeat timeout", a_silent_attempt_times_out_on_heartbeat),
    Scenario(
        "automatic heartbeats keep a long attempt alive",
        automatic_heartbeats_keep_a_long_attempt_alive,
        sdks=("python",),
        why_not="the Rust SDK sends only the heartbeats a handler sends",
    ),
    Scenario("drain", a_drain_finishes_the_running_task_and_takes_no_new_one),
    Scenario("a non-retryable error compensates", a_non_retryable_error_compensates),
    Scenario(
        "an outcome after a timeout is ignored",
        an_outcome_after_a_timeout_is_ignored,
        sdks=("python",),
        why_not="a Rust handler cannot outlive its cancellation (the SDK drops its future), so it cannot report late",
    ),
]

