"""HealthChecker: a dependency check never leaves work behind once the checker is closed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from stalwart.monitoring.health import HealthChecker
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


async def test_a_slow_ping_is_finished_not_abandoned_when_the_checker_closes(tmp_path: Path) -> None:
    checker = HealthChecker(make_settings(tmp_path, health_check_timeout=0.1))
    cleanups: list[asyncio.Task[None]] = []

    async def close_connection() -> None:
        await asyncio.sleep(0.4)

    async def slow_database_ping() -> None:
        # What SQLAlchemy does when a checkout is cancelled part-way: it closes the
        # connection in a shielded task of its own and waits for it.
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            cleanup = asyncio.create_task(close_connection())
            cleanups.append(cleanup)
            await asyncio.shield(cleanup)
            raise

    checker.bind(db_ping=slow_database_ping, redis_ping=None, shutting_down=lambda: False)
    before = asyncio.all_tasks()
    started = time.monotonic()
    checks = await checker.dependency_checks()
    # Bounded by the timeout, not by how long the ping takes to clean up after a cancellation.
    assert checks["database:responseTime"].output == "timeout"
    assert time.monotonic() - started < 0.35
    # The process stops while a check (the alert evaluation's) is in flight.
    await asyncio.sleep(1.1)
    in_flight = asyncio.ensure_future(checker.dependency_checks())
    await asyncio.sleep(0.15)
    await checker.close()
    await asyncio.wait({in_flight})
    left = {task for task in asyncio.all_tasks() - before if not task.done()}
    # Before: the timeout cancelled the ping, close() returned while the connection was still
    # being closed (after the app's pool was disposed), and the event loop's own cancellation
    # at exit then found it.
    assert left == set(), left
    assert all(cleanup.done() for cleanup in cleanups)


async def test_checks_while_a_ping_hangs_reuse_it(tmp_path: Path) -> None:
    checker = HealthChecker(make_settings(tmp_path, health_check_timeout=0.05, health_cache_seconds=0))
    pings = 0
    release = asyncio.Event()

    async def stalled() -> None:
        nonlocal pings
        pings += 1
        await release.wait()

    checker.bind(db_ping=stalled, redis_ping=None, shutting_down=lambda: False)
    for _ in range(3):
        assert (await checker.dependency_checks())["database:responseTime"].output == "timeout"
    assert pings == 1  # a stalled database is not sent one more ping per probe
    release.set()
    await asyncio.sleep(0)
    assert (await checker.dependency_checks())["database:responseTime"].output is None
    await checker.close()
