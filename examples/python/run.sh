#!/usr/bin/env bash
# Runs checkout.py against a fresh `sagaflow dev` on free ports in a temporary directory, and stops it.
#
# It leaves the checkout and the active Python alone: everything it makes is under the cargo target
# directory ($CARGO_TARGET_DIR, else target/):
#   python-venv/  a virtual environment with requirements.txt, made on first use and refreshed
#                 when requirements.txt changes;
#   python-gen/   the stubs generate.sh writes from proto/.
# The server is $SAGAFLOW_BIN, else target/release/sagaflow if it is newer than the debug build
# (or the only one), else target/debug/sagaflow.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
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
# The copy of requirements.txt inside the environment records what it was installed from.
if ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  "$python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/requirements.txt"
fi
PYTHON="$python" "$here/generate.sh" "$target/python-gen"

data="$(mktemp -d)"
port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
grpc=$(port); http=$(port); admin=$(port)
"$sagaflow" dev --data-dir "$data" --listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$http" \
  --admin-listen "127.0.0.1:$admin" >"$data/dev.log" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null; wait $dev 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do grep -q "^Sagaflow dev" "$data/dev.log" && break; sleep 0.1; done
"$python" "$here/checkout.py" --server "127.0.0.1:$grpc" --stubs "$target/python-gen"
