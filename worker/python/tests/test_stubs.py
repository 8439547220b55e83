"""The bundled stubs are what proto/ generates today, and the package is typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_stubs_match_proto() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_stubs.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_the_installed_package_carries_its_stubs_and_py_typed() -> None:
    import sagaflow
    from sagaflow.checkout.v1 import checkout_pb2_grpc
    from sagaflow.v1 import worker_pb2

    package = Path(sagaflow.__file__).parent
    assert (package / "py.typed").exists()
    assert (package / "v1" / "worker_pb2.pyi").exists()
    assert worker_pb2.ActivityTask.DESCRIPTOR.fields_by_name["lease_token"].number == 14
    assert hasattr(checkout_pb2_grpc, "CheckoutServiceStub")
