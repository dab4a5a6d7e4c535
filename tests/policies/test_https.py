"""HTTPSRedirectMiddleware: 308 for GET/HEAD, 403 problem otherwise, health probes exempt."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket

from stalwart.policies.https import HTTPSRedirectMiddleware, https_redirect_middleware
from stalwart.policies.proxies import ProxyHeadersMiddleware
from stalwart.policies.stack import install_policies
from stalwart.settings import Settings

pytestmark = pytest.mark.anyio


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


async def endpoint(request: Request) -> Response:
    return JSONResponse({"scheme": request.url.scheme})


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    await websocket.close()


ROUTES = [
    Route("/notes", endpoint, methods=["GET", "HEAD", "POST", "DELETE"]),
    Route("/health", endpoint),
    Route("/health/live", endpoint),
    Route("/health/ready", endpoint),
    WebSocketRoute("/ws", ws_endpoint),
]


def make_app(*middleware: Middleware) -> Starlette:
    chosen = list(middleware) or [Middleware(HTTPSRedirectMiddleware)]
    return Starlette(routes=ROUTES, middleware=chosen)


async def request(
    app: Starlette,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    peer: str = "127.0.0.1",
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=(peer, 5000))
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.request(method, url, headers=headers)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_get_and_head_over_http_redirect_with_308(method: str) -> None:
    response = await request(make_app(), method, "http://api.example.com/notes?limit=5&q=a%20b")
    assert response.status_code == 308
    assert response.headers["location"] == "https://api.example.com/notes?limit=5&q=a%20b"
    assert response.content == b""


async def test_redirect_drops_the_http_port() -> None:
    response = await request(make_app(), "GET", "http://api.example.com:8080/notes")
    assert response.headers["location"] == "https://api.example.com/notes"


async def test_redirect_uses_the_configured_https_port() -> None:
    app = make_app(Middleware(HTTPSRedirectMiddleware, https_port=8443))
    response = await request(app, "GET", "http://[::1]:8080/notes")
    assert response.headers["location"] == "https://[::1]:8443/notes"


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_other_methods_over_http_are_refused_with_403_problem(method: str) -> None:
    response = await request(make_app(), method, "http://api.example.com/notes")
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "location" not in response.headers
    body = orjson.loads(response.content)
    assert body["type"] == "/problems/https-required"
    assert body["status"] == 403
    assert body["instance"] == "/notes"


@pytest.mark.parametrize("path", ["/health", "/health/live"])
async def test_health_probes_pass_over_http(path: str) -> None:
    response = await request(make_app(), "GET", f"http://10.0.0.5{path}")
    assert response.status_code == 200
    assert response.json() == {"scheme": "http"}


async def test_other_health_paths_are_not_exempt() -> None:
    response = await request(make_app(), "GET", "http://10.0.0.5/health/ready")
    assert response.status_code == 308


async def test_https_requests_pass() -> None:
    response = await request(make_app(), "POST", "https://api.example.com/notes")
    assert response.status_code == 200
    assert response.json() == {"scheme": "https"}


async def test_malformed_host_gets_400_problem() -> None:
    response = await request(
        make_app(), "GET", "http://api.example.com/notes", headers={"Host": "evil.com/x@y"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "location" not in response.headers


async def test_forwarded_proto_believed_from_trusted_proxy_only() -> None:
    app = make_app(
        Middleware(ProxyHeadersMiddleware, trusted_proxies=["10.0.0.0/8"]),
        Middleware(HTTPSRedirectMiddleware),
    )
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    trusted = await request(app, "GET", "http://api/notes", headers=headers, peer="10.1.2.3")
    assert trusted.status_code == 200
    assert trusted.json() == {"scheme": "https"}
    spoofed = await request(app, "GET", "http://api/notes", headers=headers, peer="198.51.100.1")
    assert spoofed.status_code == 308


async def websocket(scheme: str) -> list[Message]:
    """Drive the middleware with a raw websocket scope; what it sends back."""
    sent: list[Message] = []
    incoming: list[Message] = [
        {"type": "websocket.connect"},
        {"type": "websocket.disconnect", "code": 1000},
    ]

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "scheme": scheme,
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "subprotocols": [],
    }
    await make_app()(scope, receive, send)
    return sent


async def test_plain_websocket_is_closed_with_policy_violation() -> None:
    assert await websocket("ws") == [
        {"type": "websocket.close", "code": 1008, "reason": "HTTPS required"}
    ]


async def test_secure_websocket_passes() -> None:
    sent = await websocket("wss")
    assert sent[0]["type"] == "websocket.accept"
    assert {"type": "websocket.send", "text": "hello"} in sent


def test_on_in_production_only_by_default() -> None:
    assert https_redirect_middleware(settings(env="development")) is None
    assert https_redirect_middleware(settings(env="test")) is None
    production = https_redirect_middleware(settings(env="production"))
    assert production is not None
    factory: object = production.cls
    assert factory is HTTPSRedirectMiddleware
    forced = https_redirect_middleware(settings(env="development", https_redirect=True))
    assert forced is not None


async def test_problem_body_is_exact() -> None:
    response = await request(make_app(), "PUT", "http://api.example.com/notes")
    assert orjson.loads(response.content) == {
        "type": "/problems/https-required",
        "title": "HTTPS required",
        "status": 403,
        "detail": "This service accepts requests over HTTPS only; repeat it with https://.",
        "instance": "/notes",
        "request_id": None,
    }


async def test_production_stack_redirects_and_sends_hsts_over_https_only() -> None:
    """Slots 1, 4 and 6 together: the 308 carries the headers but no HSTS; HTTPS gets HSTS."""
    app = FastAPI()

    @app.get("/api/x")
    async def x() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    config = settings(
        env="production",
        trusted_proxies="10.0.0.0/8",
        rate_limit_backend="memory",
        access_log=False,
    )
    install_policies(app, config)
    redirect = await request(app, "GET", "http://api.example.com/api/x")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "https://api.example.com/api/x"
    assert redirect.headers["x-content-type-options"] == "nosniff"
    assert (
        redirect.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    )
    assert "strict-transport-security" not in redirect.headers
    probe = await request(app, "GET", "http://10.0.0.5/health", peer="10.0.0.2")
    assert probe.status_code == 200
    assert "strict-transport-security" not in probe.headers
    proxied = await request(
        app,
        "GET",
        "http://api.example.com/api/x",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"},
        peer="10.0.0.2",
    )
    assert proxied.status_code == 200
    assert proxied.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
