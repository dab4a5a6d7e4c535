"""/api/monitor and /metrics: access, contents, route templates, alerts
(src/stalwart/api/monitor.py, src/stalwart/monitoring/)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client.parser import text_string_to_metric_families

from stalwart.app import create_app
from stalwart.ops.admins import create_or_promote_admin
from tests.conftest import REDIS_URL, captured_records, make_settings, signup

pytestmark = pytest.mark.anyio

MONITOR_TOKEN = "monitor-" + "x" * 32
AUTH = {"Authorization": f"Bearer {MONITOR_TOKEN}"}
AppClient = Callable[..., AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

WINDOW_KEYS = {"requests", "rate_per_second", "errors_4xx", "errors_5xx", "error_rate_4xx",
               "error_rate_5xx", "p50_ms", "p95_ms", "p99_ms", "max_ms"}


@pytest.fixture
def app_client(tmp_path: Path, database_url: str) -> AppClient:
    @asynccontextmanager
    async def build(**overrides: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
        values: dict[str, Any] = {"monitor_token": MONITOR_TOKEN, "alert_eval_seconds": 3600}
        values.update(overrides)
        settings = make_settings(tmp_path, database_url=database_url, **values)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield app, c

    return build


@pytest.fixture
def alert_lines() -> Iterator[list[logging.LogRecord]]:
    """Records of the `stalwart.alerts` logger (a handler of its own: independent of the
    logging configuration other tests may have applied)."""
    with captured_records("stalwart.alerts") as records:
        yield records


def lines_for(records: list[logging.LogRecord], name: str) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in records if getattr(r, "alert.name", "") == name]


async def test_access_needs_the_monitor_token_or_an_admin(app_client: AppClient) -> None:
    async with app_client() as (app, client):
        for path in ("/api/monitor", "/metrics"):
            r = await client.get(path)
            assert r.status_code == 401
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"] == 'Bearer realm="stalwart"'
            for token in ("wrong", MONITOR_TOKEN + "x", "y" * 300):
                r = await client.get(path, headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 401
        user = await signup(client, "user")
        for path in ("/api/monitor", "/metrics"):
            r = await client.get(path, headers=user.headers)
            assert r.status_code == 403
            assert r.headers["content-type"] == "application/problem+json"
            assert (await client.get(path, headers=AUTH)).status_code == 200
        await create_or_promote_admin(app.state.settings, user.email, "Admin", user.password)
        for path in ("/api/monitor", "/metrics"):
            r = await client.get(path, headers=user.headers)
            assert r.status_code == 200
            assert r.headers["cache-control"] == "no-store"


async def test_without_a_monitor_token_only_admins_get_in(app_client: AppClient) -> None:
    async with app_client(monitor_token=None) as (app, client):
        assert (await client.get("/api/monitor", headers=AUTH)).status_code == 401
        admin = await signup(client, "admin")
        await create_or_promote_admin(app.state.settings, admin.email, "Admin", admin.password)
        assert (await client.get("/api/monitor", headers=admin.headers)).status_code == 200


async def test_report_has_exactly_these_keys(app_client: AppClient) -> None:
    async with app_client() as (_app, client):
        await client.get("/health/live")
        r = await client.get("/api/monitor", headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"service", "sharing", "process", "instances", "system", "requests",
                         "routes", "timeline", "rate_limit", "database", "redis", "alerts"}
    assert set(body["service"]) == {"id", "version", "release_id", "environment", "time",
                                    "started_at", "uptime_seconds"}
    assert body["service"]["environment"] == "test"
    assert ISO.fullmatch(body["service"]["time"])
    assert body["sharing"] == {"mode": "folder", "instances": 1}
    assert set(body["process"]) == {"rss_bytes", "rss_trend", "cpu_percent", "open_fds",
                                    "threads", "loop_lag_ms", "loop_lag_max_ms"}
    assert body["process"]["rss_bytes"] > 10 * 1024 * 1024
    assert body["process"]["open_fds"] > 0
    assert body["process"]["threads"] >= 1
    assert len(body["instances"]) == 1
    assert set(body["instances"][0]) == {
        "id", "pid", "started_at", "uptime_seconds", "last_seen_seconds", "in_flight",
        "rss_bytes", "cpu_percent", "open_fds", "threads", "loop_lag_ms", "loop_lag_max_ms"}
    assert set(body["system"]) == {"cpu_count", "cpu_percent", "load_1", "load_5", "load_15",
                                   "memory_total_bytes", "memory_available_bytes",
                                   "memory_used_percent"}
    requests = body["requests"]
    assert set(requests) == {"in_flight", "total", "by_status_class", "by_method", "windows"}
    assert requests["in_flight"] == 1  # this request
    assert set(requests["windows"]) == {"1m", "5m", "15m"}
    for window in requests["windows"].values():
        assert set(window) == WINDOW_KEYS
    route = body["routes"][0]
    assert set(route) == {"route", "total", "by_method", "by_status_class", "windows"}
    point = body["timeline"][-1]
    assert set(point) == {"t", "requests", "rate_per_second", "p95_ms", "error_rate_4xx",
                          "error_rate_5xx"}
    assert set(body["rate_limit"]) == {"hits", "rejections", "errors"}
    assert set(body["database"]) == {"backend", "status", "response_time_ms", "pool"}
    assert set(body["database"]["pool"]) == {"size", "in_use", "idle", "overflow"}
    assert body["database"]["status"] == "pass"
    assert body["redis"] == {"configured": False, "status": None, "latency_ms": None}
    names = [a["name"] for a in body["alerts"]]
    assert names == ["memory_rss", "event_loop_lag", "error_rate_5xx", "latency_p95",
                     "dependency_database"]
    for alert in body["alerts"]:
        assert set(alert) == {"name", "state", "value", "threshold", "unit", "scope", "since",
                              "description", "instances"}
        assert alert["state"] == "ok"
        assert ISO.fullmatch(alert["since"])
    assert "secret" not in r.text.lower()
    assert MONITOR_TOKEN not in r.text


async def test_volume_rates_and_percentiles_by_route_template(app_client: AppClient) -> None:
    async with app_client() as (_app, client):
        raw = f"/api/v1/notes/{uuid.uuid4().hex}"
        for _ in range(4):
            assert (await client.get(raw)).status_code == 401
        unmatched = f"/no-such-page-{uuid.uuid4().hex}"
        for _ in range(2):
            assert (await client.get(unmatched)).status_code == 404
        for _ in range(3):
            assert (await client.get("/health/live")).status_code == 200
        r = await client.get("/api/monitor", headers=AUTH)
        metrics = await client.get("/metrics", headers=AUTH)
    body = r.json()
    routes = {route["route"]: route for route in body["routes"]}
    assert set(routes) == {"/api/v1/notes/{note_id}", "<unmatched>", "/health/live"}
    notes = routes["/api/v1/notes/{note_id}"]
    assert notes["total"] == 4
    assert notes["by_status_class"] == {"4xx": 4}
    assert notes["by_method"] == {"GET": 4}
    assert notes["windows"]["1m"]["requests"] == 4
    assert notes["windows"]["1m"]["error_rate_4xx"] == 1.0
    assert notes["windows"]["1m"]["p50_ms"] > 0
    assert notes["windows"]["15m"]["max_ms"] >= notes["windows"]["15m"]["p99_ms"]
    assert routes["<unmatched>"]["total"] == 2
    assert body["requests"]["total"] == 9
    assert body["requests"]["by_status_class"] == {"2xx": 3, "4xx": 6}
    assert body["requests"]["windows"]["1m"]["requests"] == 9
    assert body["requests"]["windows"]["1m"]["rate_per_second"] > 0
    assert sum(p["requests"] for p in body["timeline"]) == 9
    for text in (r.text, metrics.text):
        assert raw not in text
        assert unmatched not in text
    assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    counted = {
        (s.labels["route"], s.labels["status_class"]): s.value
        for s in families["stalwart_http_requests"].samples
        if s.name == "stalwart_http_requests_total"
    }
    assert counted[("/api/v1/notes/{note_id}", "4xx")] == 4
    assert counted[("<unmatched>", "4xx")] == 2


async def test_rate_limit_rejections_are_reported(app_client: AppClient, tmp_path: Path) -> None:
    async with app_client(rate_limit="3/15minutes") as (app, client):
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("198.51.100.9", 1)),
            base_url="http://testserver",
        )
        async with other:
            before = (await other.get("/api/monitor", headers=AUTH)).json()["rate_limit"]
            statuses = [(await client.get("/api/v1/notes")).status_code for _ in range(6)]
            assert statuses == [401, 401, 401, 429, 429, 429]
            after = (await other.get("/api/monitor", headers=AUTH)).json()["rate_limit"]
    assert after["rejections"] - before["rejections"] == 3


async def test_redis_latency_when_configured(app_client: AppClient) -> None:
    prefix = f"stalwart:test:{uuid.uuid4().hex}:"
    async with app_client(redis_url=REDIS_URL, metrics_key_prefix=prefix) as (_app, client):
        body = (await client.get("/api/monitor", headers=AUTH)).json()
    assert body["redis"]["configured"] is True
    assert body["redis"]["status"] == "pass"
    assert 0 < body["redis"]["latency_ms"] < 1000
    assert body["sharing"]["mode"] == "redis"
    assert "dependency_redis" in [a["name"] for a in body["alerts"]]


async def test_5xx_alert_fires_and_recovers_logging_once_each(
    app_client: AppClient, alert_lines: list[logging.LogRecord]
) -> None:
    async with app_client(alert_5xx_rate=0.1, alert_min_requests=5) as (app, client):
        async def boom() -> JSONResponse:
            return JSONResponse({"detail": "broken"}, status_code=500)

        app.add_api_route("/boom", boom)
        monitoring = app.state.resources.monitoring
        for _ in range(10):
            assert (await client.get("/boom")).status_code == 500
        for _ in range(3):
            await monitoring.evaluate_alerts()
        assert lines_for(alert_lines, "error_rate_5xx") == [
            ("WARNING", "alert error_rate_5xx firing: 1.0 ratio above threshold 0.1")
        ]
        body = (await client.get("/api/monitor", headers=AUTH)).json()
        alert = next(a for a in body["alerts"] if a["name"] == "error_rate_5xx")
        assert alert["state"] == "firing"
        assert alert["value"] == 1.0
        assert alert["threshold"] == 0.1
        assert alert["scope"] == "service"
        assert ISO.fullmatch(alert["since"])
        assert body["requests"]["windows"]["1m"]["errors_5xx"] == 10

        for _ in range(120):
            await client.get("/health/live")
        for _ in range(3):
            await monitoring.evaluate_alerts()
        lines = lines_for(alert_lines, "error_rate_5xx")
        assert len(lines) == 2
        assert lines[1][0] == "INFO"
        assert re.fullmatch(
            r"alert error_rate_5xx ok again after \d+ s: 0\.0\d+ ratio \(threshold 0\.1\)",
            lines[1][1],
        )
        body = (await client.get("/api/monitor", headers=AUTH)).json()
        assert next(a for a in body["alerts"] if a["name"] == "error_rate_5xx")["state"] == "ok"


async def test_latency_alert_waits_for_enough_requests(
    app_client: AppClient, alert_lines: list[logging.LogRecord]
) -> None:
    async with app_client(alert_p95_ms=0.000001, alert_min_requests=5) as (app, client):
        monitoring = app.state.resources.monitoring
        for _ in range(4):
            await client.get("/health/live")
        await monitoring.evaluate_alerts()
        assert lines_for(alert_lines, "latency_p95") == []
        await client.get("/health/live")
        await monitoring.evaluate_alerts()
        await monitoring.evaluate_alerts()
        lines = lines_for(alert_lines, "latency_p95")
        assert len(lines) == 1
        assert lines[0][0] == "WARNING"


async def test_dependency_alert(
    app_client: AppClient, alert_lines: list[logging.LogRecord]
) -> None:
    async with app_client(health_cache_seconds=0) as (app, _client):
        async def down() -> None:
            raise OSError("no route to host db.example")

        monitoring = app.state.resources.monitoring
        original = app.state.resources.db.ping
        app.state.resources.db.ping = down
        await monitoring.evaluate_alerts()
        await monitoring.evaluate_alerts()
        app.state.resources.db.ping = original
        await monitoring.evaluate_alerts()
        assert lines_for(alert_lines, "dependency_database") == [
            ("WARNING", "alert dependency_database firing: 1.0 down above threshold 0.0"),
            ("INFO", "alert dependency_database ok again after 0 s: 0.0 down (threshold 0.0)"),
        ]


async def test_background_sampler_evaluates_alerts_and_logs_once(
    app_client: AppClient, alert_lines: list[logging.LogRecord]
) -> None:
    settings = {"alert_rss_mb": 1, "alert_eval_seconds": 0.05, "monitor_sample_seconds": 0.02}
    async with app_client(**settings) as (_app, client):
        deadline = time.monotonic() + 5
        while not lines_for(alert_lines, "memory_rss") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # several more evaluations: still one line
        lines = lines_for(alert_lines, "memory_rss")
        assert len(lines) == 1
        assert lines[0][0] == "WARNING"
        pattern = r"alert memory_rss firing: [\d.]+ MiB above threshold 1\.0"
        assert re.fullmatch(pattern, lines[0][1])
        body = (await client.get("/api/monitor", headers=AUTH)).json()
    alert = next(a for a in body["alerts"] if a["name"] == "memory_rss")
    assert alert["state"] == "firing"
    assert alert["instances"] == [body["instances"][0]["id"]]
    assert alert["value"] > 1


async def test_event_loop_lag_is_measured(
    app_client: AppClient, alert_lines: list[logging.LogRecord]
) -> None:
    settings = {"monitor_sample_seconds": 0.02, "alert_eval_seconds": 0.05,
                "alert_loop_lag_ms": 400}
    async with app_client(**settings) as (_app, client):
        await asyncio.sleep(0.1)
        time.sleep(0.6)  # block the event loop on purpose
        deadline = time.monotonic() + 5
        while len(lines_for(alert_lines, "event_loop_lag")) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        body = (await client.get("/api/monitor", headers=AUTH)).json()
    assert body["process"]["loop_lag_max_ms"] >= 550
    lines = lines_for(alert_lines, "event_loop_lag")
    # A loaded test machine may lag again later on its own; the first two lines are ours.
    assert [level for level, _ in lines[:2]] == ["WARNING", "INFO"]
    assert re.fullmatch(r"alert event_loop_lag firing: [\d.]+ ms above threshold 400\.0", lines[0][1])


async def test_openapi_documents_the_monitor_report(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/api/monitor"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/MonitorOut"}
    assert {"401", "403"} <= set(operation["responses"])
    windows = spec["components"]["schemas"]["WindowsOut"]["properties"]
    assert set(windows) == {"1m", "5m", "15m"}
    assert "/metrics" in spec["paths"]
    assert "/monitor" not in spec["paths"]
