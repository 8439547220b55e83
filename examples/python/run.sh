#!/usr/bin/env bash
# Runs the Python examples against fresh servers on free ports in temporary directories, and stops them:
#   1. checkout.py, a client of the reference shop, against `sagaflow dev`;
#   2. service.py, a Python service that serves every activity of trip.json, and start.py, which
#      starts trips and prints how they ended, against `sagaflow server --definitions trip.json`.
#
# It leaves the checkout and the active Python alone: everything it makes is under the cargo target
# directory ($CARGO_TARGET_DIR, else target/):
#   python-venv/  a virtual environment with the Python SDK (worker/python) installed, made on
#                 first use; the SDK is reinstalled on every run, its dependencies when its
#                 pyproject.toml changes.
# The server is $SAGAFLOW_BIN, else target/release/sagaflow if it is newer than the debug build
# (or the only one), else target/debug/sagaflow.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
sdk="$(cd "$here/../../worker/python" && pwd)"
target="${CARGO_TARGET_DIR:-$here/../../target}"
# Cargo reads a relative CARGO_TARGET_DIR against the directory it runs in; so do we.
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac

if [ -n "${SAGAFLOW_BIN:-}" ]; then
  sagaflow="$SAGAFLOW_BIN"
else
  release="$target/release/sagaflow" debug="$target/debug/sagaflow"
  if [ -x "$release" ] && { [ ! -x "$debug" ] || [ "$release" -nt "$debug" ]; }; then
    sagaflow="$release"
  elif [ -x "$debug" ]; then
    sagaflow="$debug"
  else
    echo "run.sh: no sagaflow binary in $target; build one (cargo build --release --bin sagaflow) or set SAGAFLOW_BIN" >&2
    exit 1
  fi
fi

venv="$target/python-venv"
if [ ! -x "$venv/bin/python" ]; then
  # A half-made environment (no ensurepip) would pass the check above next time: remove it.
  python3 -m venv "$venv" || {
    rm -rf "$venv"
    echo "run.sh: python3 cannot make a virtual environment (Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
python="$venv/bin/python"
# The copy of the SDK's pyproject.toml inside the environment records what its dependencies came from.
if ! cmp -s "$sdk/pyproject.toml" "$venv/sdk-pyproject.toml"; then
  "$python" -m pip install --quiet --disable-pip-version-check "$sdk"
  cp "$sdk/pyproject.toml" "$venv/sdk-pyproject.toml"
fi
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$sdk"
rm -rf "$sdk/build" "$sdk"/src/*.egg-info

data="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$data"
}
trap cleanup EXIT
port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
# Waits until FILE has a line starting with PREFIX, for at most 10 s.
await_line() {
  for _ in $(seq 1 100); do grep -q "^$2" "$1" && return 0; sleep 0.1; done
  echo "run.sh: no \"$2\" in $1 within 10 s:" >&2
  cat "$1" >&2
  return 1
}

# 1. The checkout client against the whole shop.
grpc=$(port); http=$(port); admin=$(port)
"$sagaflow" dev --data-dir "$data/dev" --listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$http" \
  --admin-listen "127.0.0.1:$admin" >"$data/dev.log" 2>&1 &
pids+=($!)
await_line "$data/dev.log" "Sagaflow dev"
"$python" "$here/checkout.py" --server "127.0.0.1:$grpc"

# 2. A saga defined as data, its activities served by a Python service.
grpc=$(port); http=$(port)
"$sagaflow" server --data-dir "$data/server" --listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$http" \
  --definitions "$here/trip.json" >"$data/server.log" 2>&1 &
pids+=($!)
await_line "$data/server.log" "sagaflow listening"
"$python" "$here/service.py" --server "127.0.0.1:$grpc" --definitions "$here/trip.json" 2>"$data/service.log" &
service=$!
pids+=("$service")
"$python" "$here/start.py" --server "127.0.0.1:$grpc"
# The service drains on SIGTERM and exits 0.
kill -TERM "$service"
wait "$service"
