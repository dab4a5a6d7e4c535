"""The floor app of benchmarks/scale.py answers the static route with what the full service sends."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from benchmarks import scale_apps
from stalwart.policies import request_log
from stalwart.policies.exchange import BLOCK, PREPARED_FIELDS

# What the benchmark's client sends: one client behind a trusted proxy that terminated TLS.
CLIENT = {"X-Forwarded-For": "203.0.113.10", "X-Forwarded-Proto": "https"}
# Set per response by the server or per request by the policy: compared by name only.
PER_REQUEST = {"x-request-id", "ratelimit"}


def _get(app: ASGIApp) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get("/bench/static", headers=CLIENT)

    return asyncio.run(go())


@pytest.fixture
def apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FastAPI, FastAPI]:
    monkeypatch.setenv("BENCH_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'bench.db'}")
    for name, value in {
        "STALWART_ENV": "production",
        "STALWART_SECRET_KEY": secrets.token_urlsafe(48),
        "STALWART_TRUSTED_PROXIES": "127.0.0.1/32",
        # Production refuses a SQLite file in a temporary folder, and the static route never
        # reaches the database: a PostgreSQL URL that is never connected to (no lifespan here).
        "STALWART_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        "STALWART_DATA_DIR": str(tmp_path / "data"),
        "STALWART_CORS_ORIGINS": "https://bench.example.com",
        "STALWART_RATE_LIMIT": "1000000000/hour",
    }.items():
        monkeypatch.setenv(name, value)
    return scale_apps.floor_app(), scale_apps.full_app()


def test_floor_sends_the_full_services_headers_and_body(apps: tuple[FastAPI, FastAPI]) -> None:
    floor, full = (_get(app) for app in apps)
    assert floor.status_code == full.status_code == 200
    assert floor.content == full.content == scale_apps.BODY
    assert [name for name, _ in floor.headers.raw] == [name for name, _ in full.headers.raw]
    same = {k: v for k, v in full.headers.items() if k not in PER_REQUEST}
    assert {k: v for k, v in floor.headers.items() if k not in PER_REQUEST} == same
    assert len(floor.headers["x-request-id"]) == 32
    assert floor.headers["ratelimit"] == '"1000000000-in-1h";r=999999999;t=3600'


def test_floor_writes_one_access_log_line_per_request(
    apps: tuple[FastAPI, FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[bytes] = []
    monkeypatch.setattr(request_log.ACCESS_LOG, "write", lines.append)
    response = _get(apps[0])
    assert len(lines) == 1
    line = orjson.loads(lines[0])
    assert line["request.id"] == response.headers["x-request-id"]
    assert line["client.address"] == "203.0.113.0"
    assert (line["http.route"], line["http.response.status_code"], line["http.response.body.size"]) == (
        "/bench/static",
        200,
        len(scale_apps.BODY),
    )


def test_under_stalwart_serve_floor_and_full_service_send_the_same_block(apps: tuple[FastAPI, FastAPI]) -> None:
    """With the server's PREPARED_FIELDS extension both send the fixed fields as one block."""

    def start_message(app: FastAPI) -> tuple[Message, bytes]:
        starts: list[tuple[Message, bytes]] = []

        async def server(scope: Scope, receive: Receive, send: Send) -> None:
            slot: dict[str, Any] = {}

            async def record(message: Message) -> None:
                if message["type"] == "http.response.start":
                    starts.append((dict(message), slot[BLOCK]))
                await send(message)

            await app({**scope, "extensions": {PREPARED_FIELDS: slot}}, receive, record)

        _get(server)
        return starts[0]

    (floor, floor_block), (full, full_block) = (start_message(app) for app in apps)
    assert floor_block == full_block
    assert floor_block.startswith(b"content-security-policy: default-src 'none'")
    assert [n for n, _ in floor["headers"]] == [n for n, _ in full["headers"]]
    assert b"x-frame-options" not in [n for n, _ in floor["headers"]]
