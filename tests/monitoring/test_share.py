"""Figures shared between workers and instances (src/stalwart/monitoring/share.py, service.py):
two app instances, as two workers or two hosts would run them, show summed counts."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from stalwart.app import create_app
from stalwart.monitoring.share import FolderShare, RedisShare
from tests.conftest import REDIS_URL, captured_records, make_settings

pytestmark = pytest.mark.anyio

TOKEN = "monitor-" + "z" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def test_folder_share_reads_live_files_of_others(tmp_path: Path) -> None:
    share = FolderShare(tmp_path / "metrics", stale_seconds=10)
    assert await share.collect("me") == []  # no folder yet
    await share.publish("me", b"mine")
    await share.publish("other", b"theirs")
    await share.publish("old", b"stale")
    await share.publish("dead", b"gone")
    now = time.time()
    os.utime(tmp_path / "metrics" / "old.json", (now - 30, now - 30))
    os.utime(tmp_path / "metrics" / "dead.json", (now - 120, now - 120))
    assert await share.collect("me") == [b"theirs"]
    assert not (tmp_path / "metrics" / "dead.json").exists()  # forgotten after a minute
    assert (tmp_path / "metrics" / "old.json").exists()  # stale: ignored, kept a while
    await share.publish("other", b"newer")  # replaced atomically
    assert await share.collect("me") == [b"newer"]
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == [
        "me.json", "old.json", "other.json"]
    await share.remove("other")
    assert await share.collect("me") == []


async def test_redis_share_reads_live_keys_of_others(redis: Redis) -> None:
    prefix = f"stalwart:test:{uuid.uuid4().hex}:"
    share = RedisShare(redis, prefix=prefix, service="svc", stale_seconds=10, timeout=2)
    await share.publish("me", b"mine")
    await share.publish("other", b"theirs")
    assert await share.collect("me") == [b"theirs"]
    ttl = await redis.pttl(f"{prefix}svc:other")
    assert 0 < ttl <= 10_000
    await redis.zadd(f"{prefix}svc:instances", {"ghost": time.time() - 60})
    assert await share.collect("me") == [b"theirs"]  # too old for the index
    await share.remove("other")
    assert await share.collect("me") == []
    await share.remove("me")
    await redis.delete(f"{prefix}svc:instances")


@pytest.fixture
def alert_lines() -> Iterator[list[logging.LogRecord]]:
    with captured_records("stalwart.alerts") as records:
        yield records


@asynccontextmanager
async def two_instances(
    tmp_path: Path, database_url: str, **overrides: Any
) -> AsyncIterator[list[tuple[FastAPI, httpx.AsyncClient]]]:
    """Two apps (two workers, or two hosts) of one service, sharing the same settings."""
    settings = make_settings(
        tmp_path, database_url=database_url, monitor_token=TOKEN, alert_eval_seconds=3600,
        metrics_publish_seconds=3600, **overrides,  # published explicitly below
    )
    async with AsyncExitStack() as stack:
        pairs = []
        for ip in ("203.0.113.1", "203.0.113.2"):
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app, client=(ip, 1))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )
            pairs.append((app, client))
        yield pairs


async def check_summed(pairs: list[tuple[FastAPI, httpx.AsyncClient]], mode: str) -> None:
    (app_a, client_a), (app_b, client_b) = pairs
    for _ in range(3):
        assert (await client_a.get("/health/live")).status_code == 200
    for _ in range(5):
        assert (await client_b.get("/health/live")).status_code == 200
    await client_b.get("/no-such-page")
    await app_a.state.resources.monitoring.publish()
    await app_b.state.resources.monitoring.publish()
    for app, client in pairs:
        app.state.resources.monitoring._others_at = -1.0e9  # no cached read of the others
        body = (await client.get("/api/monitor", headers=AUTH)).json()
        assert body["sharing"] == {"mode": mode, "instances": 2}
        assert len({i["id"] for i in body["instances"]}) == 2
        routes = {r["route"]: r for r in body["routes"]}
        assert routes["/health/live"]["total"] == 8
        assert routes["/health/live"]["windows"]["1m"]["requests"] == 8
        assert routes["<unmatched>"]["total"] == 1
        assert body["process"]["rss_bytes"] == sum(i["rss_bytes"] for i in body["instances"])
        text = (await client.get("/metrics", headers=AUTH)).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        live = [
            s.value for s in families["stalwart_http_requests"].samples
            if s.name == "stalwart_http_requests_total" and s.labels["route"] == "/health/live"
        ]
        assert live == [8.0]
        assert families["stalwart_instances"].samples[0].value == 2.0
    # One instance stops: its figures leave with it.
    await app_b.state.resources.monitoring.stop()
    app_a.state.resources.monitoring._others_at = -1.0e9
    body = (await client_a.get("/api/monitor", headers=AUTH)).json()
    assert body["sharing"]["instances"] == 1
    assert {r["route"]: r["total"] for r in body["routes"]}["/health/live"] == 3


async def test_two_instances_sharing_a_folder_show_summed_counts(
    tmp_path: Path, database_url: str
) -> None:
    async with two_instances(tmp_path, database_url) as pairs:
        await check_summed(pairs, "folder")


async def test_two_instances_sharing_redis_show_summed_counts(
    tmp_path: Path, database_url: str
) -> None:
    prefix = f"stalwart:test:{uuid.uuid4().hex}:"
    async with two_instances(
        tmp_path, database_url, redis_url=REDIS_URL, metrics_key_prefix=prefix
    ) as pairs:
        await check_summed(pairs, "redis")


async def test_a_service_alert_is_logged_by_one_instance_only(
    tmp_path: Path, database_url: str, alert_lines: list[logging.LogRecord]
) -> None:
    async with two_instances(
        tmp_path, database_url, alert_5xx_rate=0.1, alert_min_requests=5
    ) as pairs:
        async def boom() -> JSONResponse:
            return JSONResponse({}, status_code=500)

        for app, client in pairs:
            app.add_api_route("/boom", boom)
            for _ in range(5):
                await client.get("/boom")
        for app, _client in pairs:
            await app.state.resources.monitoring.publish()
        for app, _client in pairs:
            app.state.resources.monitoring._others_at = -1.0e9
            await app.state.resources.monitoring.evaluate_alerts()
            await app.state.resources.monitoring.evaluate_alerts()
        states = [
            app.state.resources.monitoring.alerts.alerts["error_rate_5xx"].state
            for app, _ in pairs
        ]
    assert states == ["firing", "firing"]  # both know
    lines = [r.getMessage() for r in alert_lines if getattr(r, "alert.name", "") == "error_rate_5xx"]
    assert lines == ["alert error_rate_5xx firing: 1.0 ratio above threshold 0.1"]  # one says
