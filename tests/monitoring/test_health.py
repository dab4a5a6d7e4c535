"""HealthChecker on its own: closing it lets a running check finish instead of cutting it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stalwart.monitoring.health import HealthChecker
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


async def test_close_lets_a_running_check_finish(tmp_path: Path) -> None:
    """A ping cancelled mid-query tears its SQLite connection down on a thread that can outlive
    the event loop; closing waits for the check (each ping is bounded by its timeout)."""
    checker = HealthChecker(make_settings(tmp_path, health_check_timeout=1.0))
    outcome: list[str] = []

    async def slow_ping() -> None:
        try:
            await asyncio.sleep(0.3)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("finished")

    checker.bind(db_ping=slow_ping, redis_ping=None, shutting_down=lambda: False)
    probe = asyncio.create_task(checker.dependency_checks())
    await asyncio.sleep(0.05)  # the check is running
    await checker.close()
    assert outcome == ["finished"]
    assert (await probe)["database:responseTime"].status == "pass"


async def test_close_still_ends_a_check_that_outlives_its_bound(tmp_path: Path) -> None:
    checker = HealthChecker(make_settings(tmp_path, health_check_timeout=0.1))

    async def ping_that_shrugs_off_its_timeout() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(30)  # the check's timeout does not end it; close must

    checker.bind(db_ping=ping_that_shrugs_off_its_timeout, redis_ping=None, shutting_down=lambda: False)
    probe = asyncio.create_task(checker.dependency_checks())
    await asyncio.sleep(0.05)
    await asyncio.wait_for(checker.close(), 3)
    with pytest.raises(asyncio.CancelledError):
        await probe
