"""Load-balancer probes: /health/live and /health (src/stalwart/api/health.py,
src/stalwart/monitoring/health.py)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from stalwart.app import create_app
from tests.conftest import REDIS_URL, make_settings

pytestmark = pytest.mark.anyio

CHECK_KEYS = {"componentType", "observedValue", "observedUnit", "status", "time"}
AppClient = Callable[..., AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]


@pytest.fixture
def app_client(tmp_path: Path, database_url: str) -> AppClient:
    """An app with settings overrides, its lifespan running, and a client."""

    @asynccontextmanager
    async def build(**overrides: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
        settings = make_settings(tmp_path, database_url=database_url, **overrides)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield app, c

    return build


async def test_live_is_constant_and_checks_nothing(app: FastAPI, client: httpx.AsyncClient) -> None:
    async def broken() -> None:
        raise AssertionError("liveness must not touch the database")

    app.state.resources.db.ping = broken
    r = await client.get("/health/live")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/health+json"
    assert r.headers["cache-control"] == "no-store"
    assert r.json() == {"status": "pass"}
    r = await client.head("/health/live")
    assert r.status_code == 200
    assert r.content == b""


async def test_ready_reports_every_check_in_the_draft_format(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    r = await client.get("/health")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/health+json"
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert set(body) == {"status", "version", "releaseId", "serviceId", "description", "checks"}
    assert body["status"] == "pass"
    assert body["serviceId"] == "stalwart"
    assert body["releaseId"] == "0.1.0"
    assert body["version"] == "0"
    assert set(body["checks"]) == {
        "database:responseTime", "disk:free", "memory:rss", "process:shutdown"
    }
    for key, entries in body["checks"].items():
        assert len(entries) == 1
        assert set(entries[0]) == CHECK_KEYS, key
        assert entries[0]["status"] == "pass"
    db = body["checks"]["database:responseTime"][0]
    assert db["componentType"] == "datastore"
    assert db["observedUnit"] == "ms"
    assert 0 < db["observedValue"] < 1000
    assert body["checks"]["process:shutdown"][0]["observedValue"] is False
    assert body["checks"]["disk:free"][0]["observedUnit"] == "MiB"
    assert body["checks"]["memory:rss"][0]["observedValue"] > 10


async def test_ready_includes_redis_when_configured(app_client: AppClient) -> None:
    async with app_client(redis_url=REDIS_URL) as (_app, client):
        r = await client.get("/health")
    check = r.json()["checks"]["redis:responseTime"][0]
    assert check["componentType"] == "datastore"
    assert check["observedUnit"] == "ms"
    assert check["status"] == "pass"


async def test_database_down_fails_without_revealing_anything(
    app_client: AppClient, database_url: str
) -> None:
    async with app_client() as (app, client):
        async def down() -> None:
            raise OSError(f"could not connect to {database_url} at db.internal.example:5432")

        app.state.resources.db.ping = down
        r = await client.get("/health")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "fail"
    db = body["checks"]["database:responseTime"][0]
    assert db["status"] == "fail"
    assert db["output"] == "unreachable"
    for secret in (database_url, "db.internal.example", "5432", "could not connect", "postgres",
                   "sqlite", str(app.state.settings.data_dir)):
        assert secret not in r.text


async def test_dependency_checks_are_bounded_by_the_timeout(app_client: AppClient) -> None:
    async with app_client(health_check_timeout=0.2) as (app, client):
        async def hangs() -> None:
            await asyncio.sleep(30)

        app.state.resources.db.ping = hangs
        started = time.monotonic()
        r = await client.get("/health")
        elapsed = time.monotonic() - started
    assert r.status_code == 503
    assert r.json()["checks"]["database:responseTime"][0]["output"] == "timeout"
    assert elapsed < 1.5


async def test_a_flood_of_probes_runs_one_check(app_client: AppClient) -> None:
    async with app_client(health_cache_seconds=30) as (app, client):
        pings = 0
        original = app.state.resources.db.ping

        async def counted() -> None:
            nonlocal pings
            pings += 1
            await asyncio.sleep(0.05)  # still running while the other probes arrive
            await original()

        app.state.resources.db.ping = counted
        responses = await asyncio.gather(*(client.get("/health") for _ in range(50)))
        assert {r.status_code for r in responses} == {200}
        assert pings == 1  # single flight: 50 concurrent probes shared one check
        for _ in range(20):
            assert (await client.get("/health")).status_code == 200
        assert pings == 1  # then served from the cache


async def test_cache_expires(app_client: AppClient) -> None:
    async with app_client(health_cache_seconds=0.05) as (app, client):
        monitoring = app.state.resources.monitoring
        await client.get("/health")
        runs = monitoring.health.runs
        await client.get("/health")
        assert monitoring.health.runs == runs  # within the cache time
        await asyncio.sleep(0.1)
        await client.get("/health")
        assert monitoring.health.runs == runs + 1


async def test_shutting_down_fails_at_once_even_when_cached(app_client: AppClient) -> None:
    async with app_client(health_cache_seconds=60) as (app, client):
        assert (await client.get("/health")).status_code == 200
        app.state.resources.shutting_down = True
        r = await client.get("/health")
        assert r.status_code == 503
        check = r.json()["checks"]["process:shutdown"][0]
        assert check["status"] == "fail"
        assert check["observedValue"] is True
        assert (await client.get("/health/live")).status_code == 200


async def test_memory_thresholds(app_client: AppClient) -> None:
    async with app_client(alert_rss_mb=1) as (_app, client):
        r = await client.get("/health")
        assert r.status_code == 200
        assert r.json()["status"] == "warn"
        assert r.json()["checks"]["memory:rss"][0]["status"] == "warn"
    async with app_client(memory_limit_mb=1, alert_rss_mb=1) as (_app, client):
        r = await client.get("/health")
        assert r.status_code == 503
        assert r.json()["checks"]["memory:rss"][0]["status"] == "fail"


async def test_disk_thresholds(app_client: AppClient, tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    async with app_client(health_min_free_disk_mb=int(free_mb * 2)) as (_app, client):
        r = await client.get("/health")
        assert r.status_code == 200
        assert r.json()["checks"]["disk:free"][0]["status"] == "warn"
    async with app_client(health_min_free_disk_mb=int(free_mb * 8)) as (_app, client):
        r = await client.get("/health")
        assert r.status_code == 503
        assert r.json()["checks"]["disk:free"][0]["status"] == "fail"


async def test_probes_are_exempt_from_rate_limiting(app_client: AppClient) -> None:
    async with app_client(rate_limit="3/15minutes") as (_app, client):
        for _ in range(3):
            assert (await client.get("/api/v1/notes")).status_code == 401
        assert (await client.get("/api/v1/notes")).status_code == 429
        for _ in range(10):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/health/live")).status_code == 200


async def test_openapi_documents_health_json(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    responses = spec["paths"]["/health"]["get"]["responses"]
    assert "application/health+json" in responses["200"]["content"]
    assert "application/health+json" in responses["503"]["content"]
    assert "/health/live" in spec["paths"]


