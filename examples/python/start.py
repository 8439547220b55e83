"""Starts trips (sagas of trip.json) and prints how each ended.

    python start.py --server 127.0.0.1:50051

One trip's card is declined: its saga compensates (releases the seat, then the room). Exits 0 when
every trip ended as expected.
"""

from __future__ import annotations

import argparse
import sys
import uuid

from sagaflow import SyncClient, WorkflowStatus, event_type

TRIPS = [
    ({"traveller": "ada", "amount_cents": 42_000, "card": "ok"}, WorkflowStatus.COMPLETED),
    ({"traveller": "grace", "amount_cents": 31_500, "card": "declined"}, WorkflowStatus.COMPENSATED),
    ({"traveller": "edsger", "amount_cents": 27_900, "card": "ok"}, WorkflowStatus.COMPLETED),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="the orchestrator's gRPC address")
    args = parser.parse_args()
    as_expected = True
    with SyncClient(args.server) as client:
        started = [(client.start("trip", trip, request_id=f"trip-{uuid.uuid4()}"), trip, expected) for trip, expected in TRIPS]
        for handle, trip, expected in started:
            outcome = client.wait(handle.workflow_id, timeout=60)
            scheduled = [e.activity_scheduled for e in client.history(handle.workflow_id) if event_type(e) == "ActivityScheduled"]
            steps = ", ".join(f"{s.step}{' (undo)' if s.compensation else ''}" for s in scheduled)
            detail = f"{outcome.reason}" if outcome.reason else f"{outcome.result}"
            print(f"{trip['traveller']:>7}: {outcome.status.value:<11} {detail}")
            print(f"         steps run: {steps}")
            as_expected &= outcome.status is expected
    return 0 if as_expected else 1


if __name__ == "__main__":
    sys.exit(main())
