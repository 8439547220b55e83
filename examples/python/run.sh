#!/usr/bin/env bash
# Installs grpcio, generates the stubs, starts `sagaflow dev` on free ports in
# a temporary directory, runs checkout.py against it, and stops it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
sagaflow="${SAGAFLOW_BIN:-$here/../../target/debug/sagaflow}"
python3 -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$here/generate.sh"
data="$(mktemp -d)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
grpc=$(port); http=$(port); admin=$(port)
"$sagaflow" dev --data-dir "$data" --listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$http" \
  --admin-listen "127.0.0.1:$admin" >"$data/dev.log" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null; wait $dev 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do grep -q "^Sagaflow dev" "$data/dev.log" && break; sleep 0.1; done
python3 "$here/checkout.py" --server "127.0.0.1:$grpc"
