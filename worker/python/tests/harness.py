"""Real processes for the behaviour tests: a `sagaflow server`, and workers that journal what they do."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
SAGAS = HERE / "sagas.json"


def sagaflow_bin() -> Path:
    """$SAGAFLOW_BIN, else the debug build of this checkout (under $CARGO_TARGET_DIR or target/)."""
    explicit = os.environ.get("SAGAFLOW_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "sagaflow"


def rust_scenario_worker() -> Path:
    """$SAGAFLOW_SCENARIO_WORKER, else the debug build of worker/examples/scenario_worker.rs."""
    explicit = os.environ.get("SAGAFLOW_SCENARIO_WORKER")
    if explicit:
        return Path(explicit)
    return sagaflow_bin().parent / "examples" / "scenario_worker"


def worker_command(sdk: str) -> list[str]:
    """How to start the test worker of an SDK: both serve the same activities and write the same journal."""
    if sdk == "python":
        return [sys.executable, str(HERE / "worker_app.py")]
    if sdk == "rust":
        binary = rust_scenario_worker()
        if not binary.exists():
            raise RuntimeError(
                f"no Rust scenario worker at {binary}: run `cargo build -p sagaflow-worker --example scenario_worker` "
                "or set SAGAFLOW_SCENARIO_WORKER"
            )
        return [str(binary)]
    raise ValueError(f"unknown SDK {sdk!r}")


class ServerProcess:
    """`sagaflow server` on loopback ports the OS picks; its address is read from its first line."""

    def __init__(self, data_dir: Path, extra: tuple[str, ...] = (), listen: str = "127.0.0.1:0") -> None:
        binary = sagaflow_bin()
        if not binary.exists():
            raise RuntimeError(f"no sagaflow binary at {binary}: run `cargo build --bin sagaflow` or set SAGAFLOW_BIN")
        self.log = data_dir / "server.log"
        if self.log.exists():  # a restart: keep the earlier run's log
            self.log.rename(data_dir / f"server.{self.log.stat().st_mtime_ns}.log")
        self.process = subprocess.Popen(
            [str(binary), "server", "--listen", listen, "--http-listen", "127.0.0.1:0",
             "--data-dir", str(data_dir / "data"), "--definitions", str(SAGAS), *extra],
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), "NO_COLOR": "1"},
            text=True,
        )
        assert self.process.stdout is not None
        line = _readline_within(self.process.stdout, 30.0)
        if not line:
            self.stop()
            raise RuntimeError(f"the server exited before listening; see {self.log}")
        # "sagaflow listening on http://127.0.0.1:PORT (gRPC) and http://…/metrics (metrics); …"
        self.url = next(w for w in line.split() if w.startswith("http") and not w.endswith("/metrics"))
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _readline_within(stream: Any, timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        raise RuntimeError(f"the server did not print its address within {timeout} s")
    return result[0]


class WorkerProcess:
    """A worker under test, as a process: `worker_app.py` (Python SDK) or `scenario_worker` (Rust SDK)."""

    def __init__(self, server: str, journal: Path, worker_id: str, max_concurrency: int = 4, sdk: str = "python") -> None:
        self.worker_id = worker_id
        self.log = journal.with_name(f"{worker_id}.log")
        self.process = subprocess.Popen(
            [*worker_command(sdk), "--server", server, "--journal", str(journal),
             "--worker-id", worker_id, "--max-concurrency", str(max_concurrency)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait()

    def sigterm(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def exited(self, timeout: float = 30.0) -> int:
        return await eventually(lambda: self.process.poll(), timeout, f"worker {self.worker_id} to exit")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Journal:
    """What the test workers wrote: one JSON object a line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self, **match: Any) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [r for r in rows if all(r.get(k) == v for k, v in match.items())]

    async def wait_for(self, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        found = await eventually(lambda: (self.entries(**match) or [None])[0], timeout, f"a journal entry {match}")
        assert found is not None
        return found


async def eventually(probe: Callable[[], Optional[Any]], timeout: float, what: str) -> Any:
    """Polls `probe` until it returns something other than None (or False), within `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
