from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Journal, ServerProcess, WorkerProcess  # noqa: E402

from sagaflow import Client  # noqa: E402


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path)
    yield process
    process.stop()


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[Client]:
    async with Client(server.url) as c:
        yield c


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.jsonl")


class Workers:
    """Starts workers under test; stops whichever are left at the end."""

    def __init__(self, server: ServerProcess, journal: Journal, sdk: str) -> None:
        self.server, self.journal, self.sdk = server, journal, sdk
        self.started: list[WorkerProcess] = []

    def start(self, name: str, max_concurrency: int = 4) -> WorkerProcess:
        worker = WorkerProcess(self.server.url, self.journal.path, name, max_concurrency, self.sdk)
        self.started.append(worker)
        return worker


@pytest.fixture
def sdk() -> str:
    """The SDK whose worker runs the activities; test_scenarios.py parametrizes it."""
    return "python"


@pytest.fixture
def workers(server: ServerProcess, journal: Journal, sdk: str) -> Iterator[Workers]:
    w = Workers(server, journal, sdk)
    yield w
    for worker in w.started:
        worker.stop()
