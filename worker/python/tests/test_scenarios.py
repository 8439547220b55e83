"""Runs every scenario of the shared list against each SDK's worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import Journal
from scenarios import SCENARIOS, Scenario

from sagaflow import Client

# The worker under test, by SDK. Only the Python SDK's worker (tests/worker_app.py) is wired today.
SDKS = ["python"]


@pytest.mark.parametrize("sdk", SDKS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_scenario(scenario: Scenario, sdk: str, client: Client, workers: Any, journal: Journal, tmp_path: Path) -> None:
    await scenario.run(client, workers, journal, tmp_path)
