"""Starts a checkout on a Sagaflow server and waits for it, with the Python SDK's client.

    ./run.sh     # a virtual environment with the SDK under target/, a fresh `sagaflow dev`, this script

or, against a server of your own, once run.sh has made the environment (or after
`pip install ./worker/python` in one of yours):

    target/python-venv/bin/python examples/python/checkout.py --server 127.0.0.1:50051

Exits 0 when the checkout reaches the expected status (SHIPPED by default).
"""

import argparse
import sys
import uuid

from sagaflow import SyncClient, checkout_status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of the orchestrator")
    parser.add_argument("--request-id", default=f"py-{uuid.uuid4()}", help="the client's idempotency key")
    parser.add_argument("--expect", default="SHIPPED", help="the checkout status to expect at the end")
    args = parser.parse_args()

    with SyncClient(args.server) as client:
        items = {"sku-mug": 2, "sku-tee": 1}
        # A correlation id travels with the request into the saga's history.
        started = client.start_checkout(
            args.request_id, "py-customer", items, shipping_address="1 Example Street", correlation_id=args.request_id
        )
        print(f"started {started.checkout_id}")
        # Pressing "Pay" twice is safe: the same request id names the same checkout.
        again = client.start_checkout(args.request_id, "py-customer", items, shipping_address="1 Example Street")
        assert again.checkout_id == started.checkout_id and again.already_started

        client.wait(started.checkout_id, timeout=60)  # raises WorkflowTimedOut if it does not end in time
        checkout = client.get_checkout(started.checkout_id)
        status = checkout_status(checkout).value
        lines = ", ".join(f"{line.quantity} x {line.sku} @ {line.unit_price_cents / 100:.2f}" for line in checkout.lines)
        print(f"{checkout.checkout_id}: {status}, total {checkout.total_cents / 100:.2f} ({lines}), order {checkout.order_id}")
        return 0 if status == args.expect else 1


if __name__ == "__main__":
    sys.exit(main())
