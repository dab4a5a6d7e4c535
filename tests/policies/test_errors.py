"""Every error is RFC 9457 problem+json with a request id; a 500 says nothing of its cause."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from stalwart.app import create_app
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "request_id"}


def _assert_problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = r.json()
    assert set(body) >= PROBLEM_KEYS
    assert body["status"] == status
    return body


async def test_unknown_path_is_404_problem(client: httpx.AsyncClient) -> None:
    body = _assert_problem(await client.get("/no/such/path"), 404)
    assert body["type"] == "/problems/not-found"
    assert body["instance"] == "/no/such/path"


async def test_wrong_method_is_405_problem(client: httpx.AsyncClient) -> None:
    r = await client.put("/api/v1/notes")
    _assert_problem(r, 405)
    assert r.headers["allow"]


@pytest.mark.parametrize(
    "content",
    [
        b'{"email": ',  # cut short
        b'{"email": "\xff\xfe"}',  # not UTF-8
        '{"email": "a@example.com"}'.encode("utf-16"),  # JSON is UTF-8 (RFC 8259)
        '{"email": "a@example.com"}'.encode("utf-32-le"),
    ],
)
async def test_malformed_json_is_400(client: httpx.AsyncClient, content: bytes) -> None:
    r = await client.post("/api/v1/accounts", content=content, headers={"content-type": "application/json"})
    body = _assert_problem(r, 400)
    assert body["type"] == "/problems/malformed-json"
    assert body["detail"] == "The request body is not valid JSON."


async def test_validation_error_is_422_with_pointers(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/accounts", json={"email": "x", "password": "p"})
    body = _assert_problem(r, 422)
    pointers = {e["pointer"] for e in body["errors"]}  # type: ignore[attr-defined]
    assert pointers == {"/email", "/password", "/display_name"}


def _boom_app(tmp_path: Path, **overrides: object) -> FastAPI:
    settings = make_settings(tmp_path, **overrides)
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("database password=hunter2 at /srv/secret/path.py")

    return app


async def test_unhandled_exception_is_500_without_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = _boom_app(tmp_path)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=transport, base_url="http://t"
    ) as c:
        with caplog.at_level(logging.ERROR, logger="stalwart.errors"):
            r = await c.get("/boom", headers={"X-Request-ID": "req-boom-1"})
    body = _assert_problem(r, 500)
    assert "hunter2" not in r.text
    assert "RuntimeError" not in r.text
    assert "/srv/secret" not in r.text
    assert "Traceback" not in r.text
    records = [rec for rec in caplog.records if rec.name == "stalwart.errors"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert body["request_id"] == getattr(records[0], "request.id")


async def test_a_request_cancelled_at_shutdown_gets_a_503_problem(tmp_path: Path) -> None:
    """The server cancels what is still running when its graceful-shutdown timeout ends (a
    request stuck on a dependency): the client gets a problem, not uvicorn's plain-text 500."""
    app = create_app(make_settings(tmp_path))
    stuck = asyncio.Event()

    async def waits_on_a_stalled_dependency() -> None:
        stuck.set()
        await asyncio.sleep(3600)

    app.add_api_route("/stuck", waits_on_a_stalled_dependency)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/stuck", "raw_path": b"/stuck", "query_string": b"",
        "root_path": "", "headers": [(b"host", b"t"), (b"x-request-id", b"req-stuck-1")],
        "client": ("203.0.113.7", 40000), "server": ("t", 80),
    }
    async with app.router.lifespan_context(app):
        task = asyncio.create_task(app(scope, receive, send))
        await asyncio.wait_for(stuck.wait(), 10)
        task.cancel()  # what uvicorn does once the graceful-shutdown timeout has passed
        with pytest.raises(asyncio.CancelledError):
            await task  # the cancellation still goes on
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"retry-after"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    problem = orjson.loads(body)
    assert problem["status"] == 503
    assert problem["request_id"] == "req-stuck-1"
