"""The worker the behaviour tests run as a process: it serves every `t.*` activity of sagas.json and
writes what happens to a journal (one JSON object a line), which the tests read.

    python worker_app.py --server URL --journal FILE [--max-concurrency N] [--worker-id ID]

Each `*_first` activity misbehaves on its first attempt only, so that a retry can succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from sagaflow import ActivityContext, ActivityError, Client, CorrelationFilter, Worker, event_attributes, event_type


class Journal:
    def __init__(self, path: Path, worker_id: str) -> None:
        self.path = path
        self.worker_id = worker_id

    def write(self, event: str, ctx: ActivityContext, **extra: Any) -> None:
        line = {
            "event": event,
            "worker_id": self.worker_id,
            "pid": os.getpid(),
            "workflow_id": ctx.workflow_id,
            "task_id": ctx.task_id,
            "activity_type": ctx.activity_type,
            "attempt": ctx.attempt,
            "key": ctx.idempotency_key,
            "correlation_id": ctx.correlation_id,
            "traceparent": ctx.traceparent,
            "compensation": ctx.is_compensation,
            **extra,
        }
        # One write a line, straight to the OS: a SIGKILL loses nothing already written.
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")


def build(server: str, journal: Journal, worker_id: str, max_concurrency: int) -> Worker:
    worker = Worker(server, worker_id=worker_id, max_concurrency=max_concurrency, drain_timeout=20)

    @worker.activity("t.echo")
    async def echo(ctx: ActivityContext, input: Any) -> Any:
        journal.write("started", ctx)
        ctx.log.info("echoing")
        journal.write("completed", ctx)
        return {"key": ctx.idempotency_key, "attempt": ctx.attempt}

    @worker.activity("t.undo")
    async def undo(ctx: ActivityContext, input: Any) -> Any:
        journal.write("started", ctx)
        return {"undone": True}

    @worker.activity("t.decline")
    async def decline(ctx: ActivityContext, input: Any) -> Any:
        journal.write("started", ctx)
        raise ActivityError("CardDeclined", "the card was declined", retryable=False)

    @worker.activity("t.block_first")
    async def block_first(ctx: ActivityContext, input: Any) -> Any:
        journal.write("started", ctx)
        if ctx.attempt == 1:
            await asyncio.Event().wait()  # until the process is killed
        journal.write("completed", ctx)
        return {"attempt": ctx.attempt}

    @worker.activity("t.silent_first", auto_heartbeat=False)
    async def silent_first(ctx: ActivityContext, input: Any) -> Any:
        journal.write("started", ctx)
        if ctx.attempt == 1:
            try:
                await asyncio.Event().wait()  # never heartbeats: the server times the attempt out
            except asyncio.CancelledError:
                journal.write("cancelled", ctx)
                raise
        ctx.heartbeat({"progress": 1})
        journal.write("completed", ctx)
        return {"attempt": ctx.attempt}

    @worker.activity("t.steady")
    async def steady(ctx: ActivityContext, input: Any) -> Any:
        # Runs for several heartbeat timeouts without a heartbeat of its own: the worker's automatic
        # ones keep the attempt alive.
        journal.write("started", ctx)
        assert ctx.heartbeat_timeout is not None
        await asyncio.sleep(ctx.heartbeat_timeout * 4)
        journal.write("completed", ctx)
        return {"attempt": ctx.attempt}

    @worker.activity("t.gate")
    async def gate(ctx: ActivityContext, input: Any) -> Any:
        journal.write("started", ctx)
        release = Path(input["input"]["release"])  # a step gets the saga context: {"input": …, "steps": …}
        while not release.exists():
            await asyncio.sleep(0.02)
        journal.write("completed", ctx)
        return {"attempt": ctx.attempt}

    @worker.activity("t.late_first")
    async def late_first(ctx: ActivityContext, input: Any) -> Any:
        journal.write("started", ctx)
        if ctx.attempt > 1:
            journal.write("completed", ctx)
            return {"attempt": ctx.attempt}
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            journal.write("cancelled", ctx)

        # Ignores the cancellation (and any other) and finishes anyway, once the server has timed the
        # attempt out: its outcome is then late.
        async def finish() -> Any:
            async with Client(server) as client:
                while not await timed_out(client, ctx.workflow_id, ctx.task_id):
                    await asyncio.sleep(0.02)
            journal.write("completed", ctx)
            return {"attempt": ctx.attempt}

        rest = asyncio.ensure_future(finish())
        while not rest.done():
            try:
                await asyncio.shield(rest)
            except asyncio.CancelledError:
                journal.write("cancelled", ctx)
        return rest.result()

    @worker.activity("t.big")
    async def big(ctx: ActivityContext, input: Any) -> Any:
        journal.write("started", ctx)
        return {"blob": "x" * int(input["input"]["bytes"])}

    return worker


async def timed_out(client: Client, workflow_id: str, task_id: str) -> bool:
    async for event in client.history(workflow_id):
        if event_type(event) == "ActivityTimedOut" and event_attributes(event).task_id == task_id:
            return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--journal", type=Path, required=True)
    parser.add_argument("--worker-id", default=f"py-test-{os.getpid()}")
    parser.add_argument("--max-concurrency", type=int, default=4)
    args = parser.parse_args()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s [correlation_id=%(correlation_id)s] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    worker = build(args.server, Journal(args.journal, args.worker_id), args.worker_id, args.max_concurrency)
    asyncio.run(worker.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
