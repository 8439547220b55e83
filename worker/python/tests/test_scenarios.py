"""Runs every scenario of the shared list against each SDK's worker: the Python SDK's
(tests/worker_app.py) and the Rust SDK's (worker/examples/scenario_worker.rs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import Journal
from scenarios import ALL_SDKS, SCENARIOS, Scenario

from sagaflow import Client


@pytest.mark.parametrize("sdk", ALL_SDKS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_scenario(scenario: Scenario, sdk: str, client: Client, workers: Any, journal: Journal, tmp_path: Path) -> None:
    if sdk not in scenario.sdks:
        pytest.skip(f"not for the {sdk} SDK: {scenario.why_not}")
    await scenario.run(client, workers, journal, tmp_path)
