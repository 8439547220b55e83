#!/usr/bin/env bash
# Tests the Python SDK: installs it (as a user would, not editable) with its test extra into a virtual
# environment under the cargo target directory, type-checks it, and runs its pytest suite against a
# real `sagaflow server`.
#
#   worker/python/run-tests.sh [PYTEST ARGS...]
#
# The environment is $CARGO_TARGET_DIR/py-sdk-venv (else target/py-sdk-venv; with PYTHON=python3.10,
# py-sdk-venv-python3.10 and that interpreter), made on first use; its
# dependencies are refreshed when pyproject.toml changes. The server is $SAGAFLOW_BIN, else the debug
# build of this checkout (built here with `cargo build --bin sagaflow` when SAGAFLOW_BIN is unset);
# the Rust SDK's scenario worker is $SAGAFLOW_SCENARIO_WORKER, else built here the same way.
# Exits non-zero when anything fails, including when pytest collects no test (its exit code 5).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac

if [ -z "${SAGAFLOW_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet --bin sagaflow)
  export SAGAFLOW_BIN="$target/debug/sagaflow"
fi
# The Rust SDK's worker for the shared scenarios (worker/examples/scenario_worker.rs).
if [ -z "${SAGAFLOW_SCENARIO_WORKER:-}" ]; then
  (cd "$repo" && cargo build --quiet -p sagaflow-worker --example scenario_worker)
  export SAGAFLOW_SCENARIO_WORKER="$target/debug/examples/scenario_worker"
fi

# $PYTHON picks the interpreter (default python3); each gets its own environment.
interpreter="${PYTHON:-python3}"
venv="$target/py-sdk-venv"
[ -z "${PYTHON:-}" ] || venv="$venv-$(basename "$interpreter")"
if [ ! -x "$venv/bin/python" ]; then
  "$interpreter" -m venv "$venv" || {
    rm -rf "$venv"
    echo "run-tests.sh: $interpreter cannot make a virtual environment (Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
python="$venv/bin/python"
# The copy of pyproject.toml inside the environment records what its dependencies came from.
if ! cmp -s "$here/pyproject.toml" "$venv/sdk-pyproject.toml"; then
  "$python" -m pip install --quiet --disable-pip-version-check "$here[test]"
  cp "$here/pyproject.toml" "$venv/sdk-pyproject.toml"
fi
# The package itself, every time: the tests run against what `pip install ./worker/python` gives.
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall "$here"
rm -rf "$here/build" "$here"/src/*.egg-info

cd "$here"
"$python" -m mypy --no-error-summary
status=0
"$python" -m pytest -p no:cacheprovider "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "run-tests.sh: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
