#!/usr/bin/env bash
# Runs the trip-booking example end to end, on free ports in a temporary directory, and stops what it
# started:
#   1. `sagaflow server` with an empty data directory (it knows no trip-booking saga);
#   2. `sagaflow definition apply trip.yaml`: the saga is registered at runtime, as data;
#   3. the example's worker and client (examples/trip_booking.rs), which books three trips and exits
#      non-zero if any ended otherwise than expected.
# The server is $SAGAFLOW_BIN, else target/debug/sagaflow (built here if missing). The example is
# $TRIP_BOOKING_BIN, else target/debug/examples/trip_booking (built here).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
if [ -z "${SAGAFLOW_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet --bin sagaflow)
  SAGAFLOW_BIN="$target/debug/sagaflow"
fi
if [ -z "${TRIP_BOOKING_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet -p sagaflow-examples --example trip_booking)
  TRIP_BOOKING_BIN="$target/debug/examples/trip_booking"
fi

data="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$data"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

grpc=$(port); http=$(port)
"$SAGAFLOW_BIN" server --data-dir "$data/server" --listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$http" \
  >"$data/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do grep -q "^sagaflow listening" "$data/server.log" && break; sleep 0.1; done
grep -q "^sagaflow listening" "$data/server.log" || { echo "run.sh: the server did not start:" >&2; cat "$data/server.log" >&2; exit 1; }

"$SAGAFLOW_BIN" definition apply "$here/trip.yaml" --server "http://127.0.0.1:$grpc"
"$TRIP_BOOKING_BIN" --server "http://127.0.0.1:$grpc"
