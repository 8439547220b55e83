"""Serves the bench saga's activities (bench.reserve, bench.release, bench.capture, bench.order,
bench.ship) from the Python SDK, for measuring the Python worker with `sagaflow bench --server URL`.

    python tools/bench_worker.py --server 127.0.0.1:50051 [--concurrency 256] [--latency-ms 0]

Each activity waits the latency, then returns its key and attempt, as the Rust bench worker does.
Prints one line once it is serving; SIGTERM drains it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from sagaflow import ActivityContext, Worker

ACTIVITIES = ["bench.reserve", "bench.release", "bench.capture", "bench.order", "bench.ship"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    latency = args.latency_ms / 1000
    worker = Worker(args.server, worker_id="py-bench", max_concurrency=args.concurrency)

    async def activity(ctx: ActivityContext, input: Any) -> Any:
        if latency:
            await asyncio.sleep(latency)
        return {"key": ctx.idempotency_key, "attempt": ctx.attempt}

    for name in ACTIVITIES:
        worker.register(name, activity)
    print(f"py-bench serving {', '.join(ACTIVITIES)} from {args.server}", flush=True)
    asyncio.run(worker.run())


if __name__ == "__main__":
    main()
