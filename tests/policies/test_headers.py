"""SecurityHeadersMiddleware: helmet 8 defaults on every response, stricter for JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.policies.errors import ErrorMiddleware
from stalwart.policies.headers import (
    SecurityHeadersMiddleware,
    parse_header_overrides,
    security_headers_middleware,
)
from stalwart.settings import Settings
from tests.prepared_server import taking_prepared_fields

pytestmark = pytest.mark.anyio

# Written out, not imported: a change of the defaults must fail here.
HELMET_CSP = (
    "default-src 'self';base-uri 'self';font-src 'self' https: data:;form-action 'self';"
    "frame-ancestors 'self';img-src 'self' data:;object-src 'none';script-src 'self';"
    "script-src-attr 'none';style-src 'self' https: 'unsafe-inline';upgrade-insecure-requests"
)
HELMET = {
    "content-security-policy": HELMET_CSP,
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "origin-agent-cluster": "?1",
    "referrer-policy": "no-referrer",
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-dns-prefetch-control": "off",
    "x-download-options": "noopen",
    "x-frame-options": "SAMEORIGIN",
    "x-permitted-cross-domain-policies": "none",
    "x-xss-protection": "0",
}
JSON_STRICT = {
    **HELMET,
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
}
PERMISSIONS = (
    "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
    "microphone=(), payment=(), usb=(), interest-cohort=()"
)
# Headers the responses carry anyway, not from this middleware.
OWN = {"content-type", "content-length", "etag", "last-modified", "accept-ranges"}


def security_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in OWN}


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


async def html(request: Request) -> Response:
    return HTMLResponse("<h1>hi</h1>")


async def json_(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def problem(request: Request) -> Response:
    return Response(b"{}", status_code=400, media_type="application/problem+json")


async def health(request: Request) -> Response:
    return Response(b"{}", media_type="application/health+json; charset=utf-8")


async def empty(request: Request) -> Response:
    return Response(status_code=204)


async def text(request: Request) -> Response:
    return PlainTextResponse("plain")


async def banner(request: Request) -> Response:
    return JSONResponse({}, headers={"Server": "uvicorn", "X-Powered-By": "Express"})


async def own_csp(request: Request) -> Response:
    return HTMLResponse("<p>", headers={"Content-Security-Policy": "script-src 'nonce-abc'"})


async def authenticated(request: Request) -> Response:
    request.state.authenticated = True
    return JSONResponse({"me": 1})


async def authenticated_cached(request: Request) -> Response:
    request.state.authenticated = True
    return JSONResponse({"me": 1}, headers={"Cache-Control": "private, max-age=60"})


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


def make_app(middleware: Middleware, static_dir: Path | None = None) -> Starlette:
    routes: list[Any] = [
        Route("/html", html),
        Route("/json", json_),
        Route("/problem", problem),
        Route("/health", health),
        Route("/empty", empty),
        Route("/text", text),
        Route("/banner", banner),
        Route("/own-csp", own_csp),
        Route("/me", authenticated),
        Route("/me-cached", authenticated_cached),
        Route("/boom", boom),
    ]
    if static_dir is not None:
        routes.append(Mount("/static", StaticFiles(directory=static_dir)))
    return Starlette(routes=routes, middleware=[middleware, Middleware(ErrorMiddleware)])


async def get(app: ASGIApp, path: str, base_url: str = "http://testserver") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        return await client.get(path)


DEFAULT = Middleware(SecurityHeadersMiddleware)


async def test_html_response_gets_exactly_helmet_defaults() -> None:
    response = await get(make_app(DEFAULT), "/html")
    assert response.status_code == 200
    assert security_headers(response) == HELMET


async def test_html_csp_has_no_unsafe_inline_script() -> None:
    csp = (await get(make_app(DEFAULT), "/html")).headers["content-security-policy"]
    directives = {d.split(" ", 1)[0]: d for d in csp.split(";")}
    assert directives["script-src"] == "script-src 'self'"
    assert directives["script-src-attr"] == "script-src-attr 'none'"
    assert "unsafe-inline" not in directives["script-src"]


@pytest.mark.parametrize("path", ["/json", "/problem", "/health", "/empty"])
async def test_json_and_bodiless_responses_get_strict_csp_and_deny(path: str) -> None:
    response = await get(make_app(DEFAULT), path)
    assert security_headers(response) == JSON_STRICT


async def test_text_response_gets_document_headers() -> None:
    assert security_headers(await get(make_app(DEFAULT), "/text")) == HELMET


async def test_not_found_gets_headers() -> None:
    response = await get(make_app(DEFAULT), "/missing")
    assert response.status_code == 404
    assert security_headers(response) == HELMET  # Starlette's 404 is text/plain


async def test_unhandled_error_gets_headers() -> None:
    response = await get(make_app(DEFAULT), "/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert security_headers(response) == JSON_STRICT


async def test_static_file_gets_headers(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("console.log(1)")
    response = await get(make_app(DEFAULT, static_dir=tmp_path), "/static/app.js")
    assert response.status_code == 200
    assert security_headers(response) == HELMET


async def test_server_and_x_powered_by_are_removed() -> None:
    response = await get(make_app(DEFAULT), "/banner")
    assert "server" not in response.headers
    assert "x-powered-by" not in response.headers
    assert security_headers(response) == JSON_STRICT


async def test_header_set_by_the_app_wins() -> None:
    response = await get(make_app(DEFAULT), "/own-csp")
    assert response.headers.get_list("content-security-policy") == ["script-src 'nonce-abc'"]
    assert response.headers["x-frame-options"] == "SAMEORIGIN"


async def test_authenticated_response_gets_no_store() -> None:
    response = await get(make_app(DEFAULT), "/me")
    assert response.headers["cache-control"] == "no-store"


async def test_authenticated_response_keeps_its_own_cache_control() -> None:
    response = await get(make_app(DEFAULT), "/me-cached")
    assert response.headers.get_list("cache-control") == ["private, max-age=60"]


async def test_anonymous_response_gets_no_cache_control() -> None:
    assert "cache-control" not in (await get(make_app(DEFAULT), "/json")).headers


async def test_service_settings_add_permissions_policy() -> None:
    app = make_app(security_headers_middleware(settings(env="development")))
    response = await get(app, "/json")
    assert security_headers(response) == {**JSON_STRICT, "permissions-policy": PERMISSIONS}
    response = await get(app, "/html")
    assert security_headers(response) == {**HELMET, "permissions-policy": PERMISSIONS}


async def test_hsts_not_sent_over_http_in_production() -> None:
    app = make_app(security_headers_middleware(settings(env="production")))
    response = await get(app, "/html")
    assert "strict-transport-security" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_hsts_sent_over_https_in_production() -> None:
    app = make_app(security_headers_middleware(settings(env="production")))
    response = await get(app, "/json", base_url="https://testserver")
    assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


async def test_hsts_sent_over_http_in_development_for_helmet_parity() -> None:
    app = make_app(security_headers_middleware(settings(env="development")))
    response = await get(app, "/json")
    assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


async def test_hsts_settings_preload_and_max_age() -> None:
    config = settings(
        env="production", hsts_max_age=63072000, hsts_include_subdomains=False, hsts_preload=True
    )
    response = await get(make_app(security_headers_middleware(config)), "/json", "https://t")
    assert response.headers["strict-transport-security"] == "max-age=63072000; preload"


async def test_security_headers_setting_overrides_and_removes() -> None:
    config = settings(
        security_headers="X-Frame-Options:,Referrer-Policy: strict-origin,X-Extra: 1",
        permissions_policy="",
    )
    response = await get(make_app(security_headers_middleware(config)), "/html")
    expected = {**HELMET, "referrer-policy": "strict-origin", "x-extra": "1"}
    del expected["x-frame-options"]
    assert security_headers(response) == expected


async def test_hsts_override_still_not_sent_over_http_in_production() -> None:
    config = settings(env="production", security_headers="Strict-Transport-Security: max-age=5")
    app = make_app(security_headers_middleware(config))
    assert "strict-transport-security" not in (await get(app, "/json")).headers
    response = await get(app, "/json", base_url="https://testserver")
    assert response.headers["strict-transport-security"] == "max-age=5"


def test_hsts_removable() -> None:
    assert parse_header_overrides(["Strict-Transport-Security:"]) == {
        "strict-transport-security": None
    }


@pytest.mark.parametrize("item", ["no colon", "Bad Name: x", ": x"])
def test_malformed_override_fails_at_start_up(item: str) -> None:
    with pytest.raises(ValueError, match="security header override"):
        parse_header_overrides([item])


async def test_header_tuples_are_built_once() -> None:
    """Per request the middleware appends the very tuples built in __init__."""
    sent: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = SecurityHeadersMiddleware(app)

    async def record(message: Message) -> None:
        if message["type"] == "http.response.start":
            sent.append(message["headers"])

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "scheme": "http", "method": "GET", "path": "/", "headers": []}
    await middleware(scope, receive, record)
    await middleware(dict(scope), receive, record)
    assert len(sent[0]) == len(JSON_STRICT)
    assert all(a is b for a, b in zip(sent[0], sent[1], strict=True))


async def test_non_http_scope_passes_through_untouched() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        await send({"type": "lifespan.startup.complete"})

    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    await SecurityHeadersMiddleware(app)({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]
    assert messages == [{"type": "lifespan.startup.complete"}]



@pytest.mark.parametrize(
    ("path", "block_used"),
    [
        ("/html", True),
        ("/json", True),
        ("/problem", True),
        ("/empty", True),
        ("/text", True),
        ("/banner", True),
        ("/me", True),
        ("/me-cached", True),
        ("/boom", True),
        ("/missing", True),
        ("/own-csp", False),  # the app's own CSP wins: the fields go one by one
    ],
)
@pytest.mark.parametrize(
    "middleware",
    [
        Middleware(SecurityHeadersMiddleware, prepared_fields=True),
        security_headers_middleware(settings(env="production"), prepared_fields=lambda: True),
        security_headers_middleware(
            settings(security_headers=["X-Frame-Options:", "X-Extra: 1"]), prepared_fields=True
        ),
    ],
)
async def test_a_server_taking_prepared_fields_gets_the_same_fields_as_a_block(
    path: str, block_used: bool, middleware: Middleware
) -> None:
    blocks: list[bytes] = []
    plain = await get(make_app(middleware), path, base_url="https://testserver")
    app = taking_prepared_fields(make_app(middleware), blocks)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        prepared = await client.get(path)
    assert prepared.status_code == plain.status_code
    assert sorted(prepared.headers.multi_items()) == sorted(plain.headers.multi_items())
    assert len(blocks) == int(block_used)
    if block_used:
        assert b"strict-transport-security: max-age=31536000; includeSubDomains\r\n" in blocks[0]


def nested_app(copy_scope: bool) -> ASGIApp:
    """The policy's security layer outside a sub-app that sends its own, looser set (both
    taking prepared fields, the worst case: each would hand its set over as a block)."""
    inner = SecurityHeadersMiddleware(html_app, csp="default-src 'self' https://cdn.example", prepared_fields=True)

    async def sub_app(scope: Scope, receive: Receive, send: Send) -> None:
        await inner(dict(scope) if copy_scope else scope, receive, send)

    return SecurityHeadersMiddleware(sub_app, prepared_fields=True)


async def html_app(scope: Scope, receive: Receive, send: Send) -> None:
    await HTMLResponse("<p>")(scope, receive, send)


@pytest.mark.parametrize("copy_scope", [False, True])
async def test_a_nested_security_layer_wins_with_or_without_prepared_fields(copy_scope: bool) -> None:
    plain = await get(nested_app(copy_scope), "/")
    prepared = await get(taking_prepared_fields(nested_app(copy_scope)), "/")
    assert plain.headers.get_list("content-security-policy") == ["default-src 'self' https://cdn.example"]
    assert sorted(prepared.headers.multi_items()) == sorted(plain.headers.multi_items())


@pytest.mark.parametrize("prepared_fields", [False, lambda: False])
async def test_without_prepared_fields_no_block_even_under_a_server_that_takes_one(prepared_fields: object) -> None:
    blocks: list[bytes] = []
    middleware = Middleware(SecurityHeadersMiddleware, prepared_fields=prepared_fields)
    response = await get(taking_prepared_fields(make_app(middleware), blocks), "/json")
    assert blocks == []
    assert response.headers["x-frame-options"] == "DENY"
