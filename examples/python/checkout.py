"""Starts a checkout on a Sagaflow server and waits for it, with plain grpcio.

    ./run.sh     # a virtual environment and stubs under target/, a fresh `sagaflow dev`, this script

or, against a server of your own, once run.sh (or generate.sh) has made the stubs:

    target/python-venv/bin/python examples/python/checkout.py --server 127.0.0.1:50051

Exits 0 when the checkout reaches the expected status (SHIPPED by default).
"""

import argparse
import os
import sys
import uuid
from pathlib import Path


def default_stubs() -> Path:
    """Where generate.sh writes the stubs: $CARGO_TARGET_DIR/python-gen, else target/python-gen."""
    target = os.environ.get("CARGO_TARGET_DIR") or Path(__file__).resolve().parents[2] / "target"
    return Path(target) / "python-gen"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port of the orchestrator")
    parser.add_argument("--request-id", default=f"py-{uuid.uuid4()}", help="the client's idempotency key")
    parser.add_argument("--expect", default="SHIPPED", help="the checkout status to expect at the end")
    parser.add_argument("--stubs", type=Path, default=default_stubs(), help="the directory generate.sh wrote")
    args = parser.parse_args()

    # The stubs are generated, not checked in: they are importable only once their directory is on the path.
    sys.path.insert(0, str(args.stubs))
    import grpc
    from sagaflow.checkout.v1 import checkout_pb2, checkout_pb2_grpc
    from sagaflow.v1 import workflow_pb2, workflow_pb2_grpc

    with grpc.insecure_channel(args.server) as channel:
        checkouts = checkout_pb2_grpc.CheckoutServiceStub(channel)
        workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
        request = checkout_pb2.StartCheckoutRequest(
            client_request_id=args.request_id,
            customer_id="py-customer",
            items=[checkout_pb2.Item(sku="sku-mug", quantity=2), checkout_pb2.Item(sku="sku-tee", quantity=1)],
            shipping_address="1 Example Street",
        )
        # A correlation id travels with the request into the saga's history.
        started = checkouts.StartCheckout(request, metadata=[("x-correlation-id", args.request_id)])
        print(f"started {started.checkout_id}")
        # Pressing "Pay" twice is safe: the same request id names the same checkout.
        again = checkouts.StartCheckout(request)
        assert again.checkout_id == started.checkout_id and again.already_started

        done = workflows.AwaitWorkflow(workflow_pb2.AwaitWorkflowRequest(workflow_id=started.checkout_id, timeout_ms=60_000))
        if not done.terminal:
            print("the checkout did not finish within 60 s", file=sys.stderr)
            return 1
        checkout = checkouts.GetCheckout(checkout_pb2.GetCheckoutRequest(checkout_id=started.checkout_id))
        status = checkout_pb2.CheckoutStatus.Name(checkout.status).removeprefix("CHECKOUT_STATUS_")
        lines = ", ".join(f"{line.quantity} x {line.sku} @ {line.unit_price_cents / 100:.2f}" for line in checkout.lines)
        print(f"{checkout.checkout_id}: {status}, total {checkout.total_cents / 100:.2f} ({lines}), order {checkout.order_id}")
        return 0 if status == args.expect else 1


if __name__ == "__main__":
    sys.exit(main())
