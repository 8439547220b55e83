"""Serves the bench saga's activities (bench.reserve, bench.release, bench.capture, bench.order,
bench.ship) from this SDK, as `sagaflow worker --services bench` does from the Rust one:

    python -m sagaflow.bench --server URL [--concurrency 256] [--activity-latency-ms 0] [--fault ACTIVITY=fatal]

`sagaflow bench --python-worker PYTHON` starts it for every phase. Each activity waits the latency,
then returns its key and attempt. It prints one line once it is set up; SIGTERM drains it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from .worker import ActivityContext, ActivityError, Worker

ACTIVITIES = ["bench.reserve", "bench.release", "bench.capture", "bench.order", "bench.ship"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sagaflow.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--activity-latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--fault", action="append", default=[], metavar="ACTIVITY=fatal", help="fail every call non-retryably"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    latency = args.activity_latency_ms / 1000
    fatal: set[str] = set()
    for spec in args.fault:
        target, _, kind = spec.partition("=")
        if kind != "fatal" or target not in ACTIVITIES:
            parser.error(f"unsupported fault {spec!r}: only ACTIVITY=fatal, for a bench activity")
        fatal.add(target)
    worker = Worker(args.server, worker_id="py-bench", max_concurrency=args.concurrency)

    async def activity(ctx: ActivityContext, input: Any) -> Any:
        if ctx.activity_type in fatal:
            raise ActivityError("InjectedFault", f"{ctx.activity_type}=fatal", retryable=False)
        if latency:
            await asyncio.sleep(latency)
        return {"key": ctx.idempotency_key, "attempt": ctx.attempt}

    for name in ACTIVITIES:
        worker.register(name, activity)
    print(f"sagaflow.bench serving {', '.join(ACTIVITIES)} from {args.server}", flush=True)
    asyncio.run(worker.run())


if __name__ == "__main__":
    main()
