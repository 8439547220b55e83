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

    def __init__(self, server: ServerProcess, journal: Journal) -> None:
        self.server, self.journal, self.started = server, journal, []  # type: ignore[var-annotated]

    def start(self, name: str, max_concurrency: int = 4) -> WorkerProcess:
        worker = WorkerProcess(self.server.url, self.journal.path, name, max_concurrency)
        self.started.append(worker)
        return worker


@pytest.fixture
def workers(server: ServerProcess, journal: Journal) -> Iterator[Workers]:
    w = Workers(server, journal)
    yield w
    for worker in w.started:
        worker.stop()
