"""The one call: the policy stack's content and order, and its production configuration."""

from __future__ import annotations

import gc
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.policies.body_limit import BodyLimitMiddleware
from stalwart.policies.compression import CompressionMiddleware
from stalwart.policies.cors import StrictCORSMiddleware
from stalwart.policies.errors import ErrorMiddleware
from stalwart.policies.headers import SecurityHeadersMiddleware
from stalwart.policies.https import HTTPSRedirectMiddleware
from stalwart.policies.proxies import ProxyHeadersMiddleware
from stalwart.policies.rate_limit import RateLimitMiddleware
from stalwart.policies.request_log import RequestLogMiddleware
from stalwart.policies.shutdown import ShutdownMiddleware
from stalwart.policies.stack import install_policies, policy_middleware
from stalwart.settings import Settings
from tests.conftest import make_settings
from tests.prepared_server import taking_prepared_fields

PRODUCTION = {
    "env": "production",
    "secret_key": "s" * 48,
    "cors_origins": "https://app.example.com",
    "database_url": "postgresql+asyncpg://app@db.internal/app",
}


def _classes(settings: Settings) -> list[type]:
    return [m.cls for m in policy_middleware(settings)]  # type: ignore[misc]


def test_development_stack_order(tmp_path: Path) -> None:
    classes = _classes(make_settings(tmp_path, env="development", metrics_enabled=False))
    assert classes == [
        ProxyHeadersMiddleware,
        RequestLogMiddleware,
        SecurityHeadersMiddleware,
        ErrorMiddleware,
        ShutdownMiddleware,
        StrictCORSMiddleware,
        RateLimitMiddleware,
        BodyLimitMiddleware,
        CompressionMiddleware,
    ]


def test_production_stack_adds_https_and_hardens_options() -> None:
    settings = Settings(_env_file=None, **PRODUCTION)  # type: ignore[arg-type]
    stack = policy_middleware(settings)
    classes = [m.cls for m in stack]
    assert HTTPSRedirectMiddleware in classes
    assert classes.index(HTTPSRedirectMiddleware) > classes.index(SecurityHeadersMiddleware)
    options = {m.cls: m.kwargs for m in stack}
    assert options[ErrorMiddleware] == {"debug": False}
    assert options[RequestLogMiddleware]["anonymize"] is True
    assert settings.effective_anonymize_ip is True


@pytest.mark.anyio
async def test_install_policies_on_any_app(tmp_path: Path) -> None:
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    install_policies(app, make_settings(tmp_path))
    transport = httpx.ASGITransport(app=app, client=("198.51.100.1", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/hello")
        missing = await c.get("/missing")
    assert r.status_code == 200
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert r.headers["ratelimit-policy"]
    assert r.headers["x-request-id"]
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_every_response_of_the_stack_crosses_one_send_wrapper(tmp_path: Path) -> None:
    """The layers share one Exchange: a 500 sent by the error layer (outside the limiter
    and CORS) still carries what those inner layers recorded, and each header comes once."""
    app = FastAPI()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    install_policies(app, make_settings(tmp_path, cors_origins="https://app.example.com"))

    transport = httpx.ASGITransport(app=app, client=("198.51.100.1", 1234), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/boom", headers={"Origin": "https://app.example.com", "Accept-Encoding": "identity"})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["ratelimit"].startswith('"')
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"
    assert r.headers.get_list("vary") == ["Origin, Accept-Encoding"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert len(r.headers.get_list("x-request-id")) == 1



@pytest.mark.anyio
async def test_a_request_through_the_stack_leaves_no_reference_cycle(tmp_path: Path) -> None:
    """Garbage with cycles waits for the collector, which then runs every few requests on a
    busy worker: the stack frees each request's objects by reference counting alone. Driven
    with raw ASGI calls, so no client library's own cycles count."""
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    install_policies(app, make_settings(tmp_path, cors_origins="https://app.example.com"))
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    class Cycle:
        """Like uvicorn's RequestResponseCycle: the server's `send` is a method of an object
        that holds the request's scope."""

        def __init__(self, scope: dict[str, object]) -> None:
            self.scope = scope

        async def send(self, message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])  # type: ignore[arg-type]

    async def get(headers: list[tuple[bytes, bytes]]) -> None:
        scope: dict[str, object] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": "/hello", "raw_path": b"/hello", "root_path": "",
            "query_string": b"", "headers": [(b"host", b"t"), *headers],
            "client": ("198.51.100.1", 1234), "server": ("t", 80),
        }
        await app(scope, receive, Cycle(scope).send)  # type: ignore[arg-type]

    cors = [(b"origin", b"https://app.example.com"), (b"accept-encoding", b"gzip")]
    await get([])  # warm: routes and caches built
    gc.collect()
    gc.disable()
    try:
        for headers in ([], cors):
            for _ in range(20):
                await get(headers)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        cyclic = [type(o).__qualname__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert statuses == [200] * 41
    assert cyclic == []


def _hello_app(tmp_path: Path) -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    install_policies(app, make_settings(tmp_path))
    return app


class _RebuildsStart:
    """A layer outside the policy stack that sends a new start message of its own, dropping
    X-Frame-Options from the fields it can see (as a user's embed-page middleware might)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def rebuilt(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(n, v) for n, v in message.get("headers", ()) if n != b"x-frame-options"]
                message = {"type": message["type"], "status": message["status"], "headers": headers}
            await send(message)

        await self.app(scope, receive, rebuilt)


async def _get_hello(app: ASGIApp) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("198.51.100.1", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        return await c.get("/hello")


@pytest.mark.anyio
async def test_the_stack_hands_the_security_set_over_as_a_block_when_outermost(tmp_path: Path) -> None:
    blocks: list[bytes] = []
    response = await _get_hello(taking_prepared_fields(_hello_app(tmp_path), blocks))
    assert len(blocks) == 1
    assert blocks[0].startswith(b"content-security-policy: default-src 'none'; frame-ancestors 'none'\r\n")
    assert response.headers.get_list("x-frame-options") == ["DENY"]


@pytest.mark.anyio
async def test_a_layer_added_outside_the_stack_sees_and_changes_the_fields(tmp_path: Path) -> None:
    app = _hello_app(tmp_path)
    app.add_middleware(_RebuildsStart)  # outside the policy stack: no block, fields as tuples
    blocks: list[bytes] = []
    response = await _get_hello(taking_prepared_fields(app, blocks))
    assert blocks == []
    assert "x-frame-options" not in response.headers  # the outer layer's edit holds
    assert response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


@pytest.mark.anyio
async def test_a_wrapper_around_the_whole_app_cannot_drop_the_block(tmp_path: Path) -> None:
    """A wrapper the app cannot see (not added with add_middleware) builds a new start message:
    the block is in the request's extension dict, not the message, so it still reaches the head."""
    blocks: list[bytes] = []
    response = await _get_hello(taking_prepared_fields(_RebuildsStart(_hello_app(tmp_path)), blocks))
    assert len(blocks) == 1
    assert response.headers.get_list("x-frame-options") == ["DENY"]
    assert response.headers["x-content-type-options"] == "nosniff"
