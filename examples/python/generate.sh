#!/usr/bin/env bash
# Generates the Python stubs from the repository's .proto files into the directory given
# (default: $CARGO_TARGET_DIR/python-gen, else target/python-gen), with $PYTHON (default python3),
# which must have grpcio-tools (requirements.txt). run.sh calls it with its virtual environment.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto="$here/../../proto"
out="${1:-${CARGO_TARGET_DIR:-$here/../../target}/python-gen}"
rm -rf "$out" && mkdir -p "$out"
"${PYTHON:-python3}" -m grpc_tools.protoc -I "$proto" --python_out="$out" --grpc_python_out="$out" \
  "$proto/sagaflow/v1/history.proto" "$proto/sagaflow/v1/workflow.proto" \
  "$proto/sagaflow/v1/worker.proto" "$proto/sagaflow/v1/events.proto" "$proto/sagaflow/checkout/v1/checkout.proto"
# Package markers so that `import sagaflow.v1...` resolves inside the output directory.
for d in sagaflow sagaflow/v1 sagaflow/checkout sagaflow/checkout/v1; do touch "$out/$d/__init__.py"; done
