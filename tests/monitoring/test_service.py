"""The periodic performance log line (src/stalwart/monitoring/service.py)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stalwart.app import create_app
from tests.conftest import captured_records, make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def metric_lines() -> Iterator[list[logging.LogRecord]]:
    with captured_records("stalwart.metrics") as records:
        yield records


async def test_performance_figures_are_logged_periodically(
    tmp_path: Path, database_url: str, metric_lines: list[logging.LogRecord]
) -> None:
    settings = make_settings(tmp_path, database_url=database_url, metrics_log_seconds=0.2)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for _ in range(6):
                await client.get("/health/live")
            await client.get("/api/v1/notes/private-note-marker")
            deadline = time.monotonic() + 5
            while not metric_lines and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    assert metric_lines
    record = metric_lines[-1]
    assert record.levelname == "INFO"
    assert re.fullmatch(
        r"performance over the last minute: [\d.]+ req/s, p95 [\d.]+ ms, 5xx 0\.00 %, "
        r"4xx 14\.29 %, 0 in flight, rss \d+ MiB, cpu \d+ %, loop lag max [\d.]+ ms, 1 processes",
        record.getMessage(),
    )
    fields = vars(record)
    assert fields["http.server.requests"] == 7
    assert fields["http.server.error_rate_4xx"] == round(1 / 7, 4)
    assert fields["http.server.duration_p95_ms"] > 0
    assert fields["process.memory.rss_bytes"] > 10 * 1024 * 1024
    assert fields["service.processes"] == 1
    assert "private-note-marker" not in str(fields)  # words: figures may hold any digits


async def test_performance_log_can_be_turned_off(
    tmp_path: Path, database_url: str, metric_lines: list[logging.LogRecord]
) -> None:
    settings = make_settings(tmp_path, database_url=database_url, metrics_log_seconds=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        names = {t.get_name() for t in app.state.resources.monitoring._tasks}
        assert names == {
            "stalwart-monitor-sampler", "stalwart-monitor-alerts", "stalwart-monitor-publisher"
        }
    assert metric_lines == []


async def test_stop_never_swallows_its_own_cancellation(tmp_path: Path) -> None:
    """A shutdown that gives up on stop() (a bounded close step) must see it end cancelled."""
    from stalwart.monitoring.service import Monitoring

    monitoring = Monitoring(make_settings(tmp_path))

    async def slow_read() -> list[dict[str, object]]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)  # still tidying up when stop() is cancelled
        return []

    monitoring._others_inflight = asyncio.ensure_future(slow_read())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(monitoring.stop())
    await asyncio.sleep(0.1)
    stopping.cancel()
    await asyncio.wait({stopping}, timeout=2)
    assert stopping.cancelled()
