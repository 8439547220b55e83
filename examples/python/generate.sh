#!/usr/bin/env bash
# Generates the Python stubs from the repository's .proto files into ./gen.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto="$here/../../proto"
rm -rf "$here/gen" && mkdir -p "$here/gen"
python3 -m grpc_tools.protoc -I "$proto" --python_out="$here/gen" --grpc_python_out="$here/gen" \
  "$proto/sagaflow/v1/history.proto" "$proto/sagaflow/v1/workflow.proto" \
  "$proto/sagaflow/v1/worker.proto" "$proto/sagaflow/v1/events.proto" "$proto/sagaflow/checkout/v1/checkout.proto"
# Package markers so that `import sagaflow.v1...` resolves inside gen/.
for d in sagaflow sagaflow/v1 sagaflow/checkout sagaflow/checkout/v1; do touch "$here/gen/$d/__init__.py"; done
