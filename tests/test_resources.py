"""Closing the process resources never hangs on a stalled dependency."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path

import pytest

from stalwart.data.cache import CachedReads
from stalwart.resources import Resources
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


async def test_a_stalled_step_is_abandoned_after_its_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    resources = Resources.create(make_settings(tmp_path))
    await resources.start()
    assert resources.monitoring is not None

    async def stalled() -> None:
        await asyncio.sleep(3600)

    monkeypatch.setattr(resources.monitoring, "stop", stalled)
    monkeypatch.setattr("stalwart.resources._CLOSE_TIMEOUT", 0.2)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="stalwart.resources"):
        await resources.close()
    assert time.monotonic() - started < 3
    assert [r.getMessage() for r in caplog.records if r.name == "stalwart.resources"] == [
        "shutdown: closing monitoring took over 0.2 s; abandoned"
    ]


@pytest.mark.parametrize(("workers", "cached"), [(1, True), (2, False)])
async def test_the_in_process_note_cache_is_off_when_workers_cannot_share_it(
    tmp_path: Path, workers: int, cached: bool
) -> None:
    resources = Resources.create(make_settings(tmp_path, workers=workers, cache_ttl_seconds=30))
    await resources.start()
    try:
        assert isinstance(resources.db.reads, CachedReads) is cached
    finally:
        await resources.close()


async def test_nothing_outlives_close_when_health_checks_time_out(tmp_path: Path, sqlite_template: Path) -> None:
    # A health-check timeout short enough to cancel the database ping while its SQLite
    # connection is being opened (what a loaded machine does with the default 1 s). The
    # connection's teardown then ran on after close(), and the event loop's cancellation at
    # exit could hang for good on it (the test runner's "Runner is closed" flake).
    database = tmp_path / "data" / "stalwart.db"
    database.parent.mkdir(parents=True)
    shutil.copy(sqlite_template, database)
    settings = make_settings(
        tmp_path, database_url=f"sqlite+aiosqlite:///{database}", health_check_timeout=0.002,
        health_cache_seconds=0,
    )
    before = asyncio.all_tasks()
    for _ in range(100):
        resources = Resources.create(settings)
        await resources.start()
        assert resources.monitoring is not None
        in_flight = asyncio.ensure_future(resources.monitoring.health.dependency_checks())
        await asyncio.sleep(0.001)
        await resources.close()
        await asyncio.wait({in_flight})
        left = {task for task in asyncio.all_tasks() - before if not task.done()}
        assert left == set(), left
