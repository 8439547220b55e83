"""Generates the bundled gRPC stubs from the repository's proto/ directory, or checks them.

    python tools/gen_stubs.py           # rewrite src/sagaflow/{v1,checkout/v1}/ from ../../proto
    python tools/gen_stubs.py --check   # regenerate into a temporary directory and compare; exit 1 on drift

Needs grpcio-tools (the package's `dev` extra pins the version the bundled stubs were made with, so
that a check compares like with like).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent / "src" / "sagaflow"
PROTO = HERE.parents[2] / "proto"
FILES = [
    "sagaflow/v1/history.proto",
    "sagaflow/v1/workflow.proto",
    "sagaflow/v1/worker.proto",
    "sagaflow/v1/events.proto",
    "sagaflow/checkout/v1/checkout.proto",
]
# The generated folders inside the package; everything else in it is hand-written.
GENERATED = ["v1", "checkout/v1"]


def generate(out: Path) -> None:
    from grpc_tools import protoc  # imported here: only this tool needs grpcio-tools

    out.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + [str(PROTO / f) for f in FILES]) != 0:
        raise SystemExit("gen_stubs: protoc failed")
    for folder in GENERATED:
        (out / "sagaflow" / folder / "__init__.py").write_text('"""Generated from proto/ by tools/gen_stubs.py; do not edit."""\n')


def differences(expected: Path, actual: Path) -> list[str]:
    """The files that differ, are missing or are extra in `actual`, relative to the package."""
    found: list[str] = []
    for folder in GENERATED:
        left, right = expected / folder, actual / folder
        names = {p.name for p in left.glob("*.py*")} | {p.name for p in right.glob("*.py*")}
        for name in sorted(names):
            a, b = left / name, right / name
            if not a.exists() or not b.exists() or not filecmp.cmp(a, b, shallow=False):
                found.append(f"{folder}/{name}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "sagaflow"
        if args.check:
            drift = differences(fresh, PACKAGE)
            if drift:
                print("the bundled stubs differ from proto/ (run tools/gen_stubs.py):", *drift, sep="\n  ", file=sys.stderr)
                return 1
            print("bundled stubs match proto/")
            return 0
        for folder in GENERATED:
            shutil.rmtree(PACKAGE / folder, ignore_errors=True)
            shutil.copytree(fresh / folder, PACKAGE / folder)
        print(f"wrote {', '.join(GENERATED)} under {PACKAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
