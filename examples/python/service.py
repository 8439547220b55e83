"""A Python service that serves every activity of the sagas in a definitions file.

    python service.py --server 127.0.0.1:50051 --definitions trip.json

It reads the sagas (the same JSON `sagaflow server --definitions` loads), finds every activity they
name (steps and compensations), and serves each with a handler from HANDLERS; it refuses to start if
one has none, so a saga never waits for a worker that will not come. SIGTERM or Ctrl-C drains it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
from pathlib import Path
from typing import Any

from sagaflow import ActivityContext, ActivityError, CorrelationFilter, Worker

# The service's own state: what it holds, by idempotency key, so that a retried attempt changes nothing.
rooms: dict[str, str] = {}
seats: dict[str, str] = {}
charges: dict[str, int] = {}
numbers = itertools.count(1)  # a released room or seat number is never handed out again


async def hold_room(ctx: ActivityContext, saga: Any) -> Any:
    if ctx.idempotency_key not in rooms:
        rooms[ctx.idempotency_key] = f"room-{next(numbers)}"
    ctx.log.info("holding %s", rooms[ctx.idempotency_key])
    return {"room": rooms[ctx.idempotency_key]}


async def release_room(ctx: ActivityContext, saga: Any) -> Any:
    # A compensation sees the saga's context: its input and the results of the steps that completed.
    room = saga["steps"]["room"]["room"]
    for key in [k for k, held in rooms.items() if held == room]:
        del rooms[key]  # releasing twice is releasing once
    ctx.log.info("released %s", room)
    return {"released": room}


async def hold_seat(ctx: ActivityContext, saga: Any) -> Any:
    if ctx.idempotency_key not in seats:
        seats[ctx.idempotency_key] = f"seat-{next(numbers)}A"
    return {"seat": seats[ctx.idempotency_key]}


async def release_seat(ctx: ActivityContext, saga: Any) -> Any:
    seat = saga["steps"]["seat"]["seat"]
    for key in [k for k, held in seats.items() if held == seat]:
        del seats[key]
    ctx.log.info("released %s", seat)
    return {"released": seat}


async def charge(ctx: ActivityContext, saga: Any) -> Any:
    trip = saga["input"]
    if trip.get("card") == "declined":
        # Not retryable: every attempt would be declined. The saga releases the seat and the room.
        raise ActivityError("CardDeclined", f"card of {trip['traveller']} declined", retryable=False)
    charges.setdefault(ctx.idempotency_key, int(trip["amount_cents"]))
    return {"charged_cents": charges[ctx.idempotency_key]}


async def send_tickets(ctx: ActivityContext, saga: Any) -> Any:
    ctx.heartbeat({"sending": saga["input"]["traveller"]})
    return {"sent_to": saga["input"]["traveller"]}


HANDLERS = {
    "trip.hold_room": hold_room,
    "trip.release_room": release_room,
    "trip.hold_seat": hold_seat,
    "trip.release_seat": release_seat,
    "trip.charge": charge,
    "trip.send_tickets": send_tickets,
}


def activity_types(definitions: Path) -> list[str]:
    """Every activity type the sagas in the file name."""
    sagas = json.loads(definitions.read_text())
    names = set()
    for saga in sagas if isinstance(sagas, list) else [sagas]:
        for step in saga["steps"]:
            if step["action"]["type"] == "activity":
                names.add(step["action"]["activity_type"])
            if step.get("compensation"):
                names.add(step["compensation"]["activity_type"])
            if (step.get("escalation") or {}).get("notify"):
                names.add(step["escalation"]["notify"])
    return sorted(names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="the orchestrator's gRPC address")
    parser.add_argument("--definitions", type=Path, default=Path(__file__).with_name("trip.json"))
    parser.add_argument("--token", default=None, help="a worker token, for a server that runs with --auth-file")
    args = parser.parse_args()
    handler = logging.StreamHandler()
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    needed = activity_types(args.definitions)
    missing = [name for name in needed if name not in HANDLERS]
    if missing:
        print(f"service.py: no handler for {', '.join(missing)} (named in {args.definitions})", file=sys.stderr)
        return 2
    worker = Worker(args.server, token=args.token, worker_id="trip-service")
    for name in needed:
        worker.register(name, HANDLERS[name])
    logging.getLogger("trip").info("serving %s", ", ".join(needed))
    asyncio.run(worker.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
