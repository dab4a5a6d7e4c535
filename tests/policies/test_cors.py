"""CORS: what Starlette's CORSMiddleware does, and StrictCORSMiddleware closing its gaps."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from stalwart.policies.cors import CORSConfigurationError, StrictCORSMiddleware, cors_middleware
from stalwart.settings import Settings

pytestmark = pytest.mark.anyio

ORIGIN = "https://app.example.com"
EVIL = "https://evil.example.net"
PREFLIGHT_VARY = (
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, "
    "Access-Control-Request-Private-Network"
)


def settings(**values: Any) -> Settings:
    values.setdefault("cors_origins", ORIGIN)
    return Settings(_env_file=None, **values)


class Calls:
    def __init__(self) -> None:
        self.count = 0


def make_app(middleware: Middleware, calls: Calls | None = None) -> Starlette:
    calls = calls or Calls()

    async def notes(request: Request) -> Response:
        calls.count += 1
        return JSONResponse({"ok": True})

    async def varied(request: Request) -> Response:
        return JSONResponse({}, headers={"Vary": request.query_params["vary"]})

    routes = [
        Route("/api/notes", notes, methods=["GET", "POST", "OPTIONS", "DELETE"]),
        Route("/varied", varied),
    ]
    return Starlette(routes=routes, middleware=[middleware])


async def call(
    app: Starlette, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path, headers=headers)


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def preflight(origin: str, method: str = "POST", headers: str = "content-type") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


PRODUCTION = cors_middleware(settings(env="production"))


# --- Starlette's own behaviour: what it gets right, and the gaps ---------------------------


async def test_starlette_reflects_any_origin_with_wildcard_and_credentials() -> None:
    """Why `*` + credentials is refused: Starlette then trusts every site with cookies."""
    app = make_app(Middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True))
    response = await call(app, "GET", "/api/notes", {"Origin": EVIL})
    assert response.headers["access-control-allow-origin"] == EVIL
    assert response.headers["access-control-allow-credentials"] == "true"


async def test_starlette_sends_cors_headers_to_a_disallowed_origin() -> None:
    """The gap StrictCORSMiddleware closes on simple requests."""
    app = make_app(
        Middleware(
            CORSMiddleware, allow_origins=[ORIGIN], allow_credentials=True, expose_headers=["ETag"]
        )
    )
    response = await call(app, "GET", "/api/notes", {"Origin": EVIL})
    assert cors_headers(response) == {
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "ETag",
    }


async def test_starlette_preflight_for_a_disallowed_origin_lists_the_policy() -> None:
    """The gap StrictCORSMiddleware closes on preflight."""
    app = make_app(Middleware(CORSMiddleware, allow_origins=[ORIGIN], allow_methods=["POST"]))
    response = await call(app, "OPTIONS", "/api/notes", preflight(EVIL))
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["access-control-allow-methods"] == "POST"


async def test_starlette_does_not_pass_preflight_to_the_app() -> None:
    calls = Calls()
    app = make_app(Middleware(CORSMiddleware, allow_origins=[ORIGIN]), calls)
    await call(app, "OPTIONS", "/api/notes", preflight(EVIL))
    await call(app, "OPTIONS", "/api/notes", preflight(ORIGIN, "GET", ""))
    assert calls.count == 0


async def test_starlette_adds_vary_origin_without_origin_header() -> None:
    app = make_app(Middleware(CORSMiddleware, allow_origins=[ORIGIN]))
    response = await call(app, "GET", "/api/notes")
    assert response.headers["vary"] == "Origin"


# --- the service policy -------------------------------------------------------------------


async def test_allowed_origin_gets_exact_cors_headers() -> None:
    response = await call(make_app(PRODUCTION), "GET", "/api/notes", {"Origin": ORIGIN})
    assert response.status_code == 200
    assert cors_headers(response) == {
        "access-control-allow-origin": ORIGIN,
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": (
            "ETag, Location, RateLimit, RateLimit-Policy, Retry-After, X-Request-ID"
        ),
    }
    assert response.headers["vary"] == "Origin"


@pytest.mark.parametrize(
    "origin",
    [
        EVIL,
        "https://app.example.com.evil.net",
        "http://app.example.com",
        "https://APP.example.com",
        "null",
        "http://localhost:3000",
    ],
)
async def test_disallowed_origin_gets_no_cors_headers_but_vary(origin: str) -> None:
    calls = Calls()
    response = await call(make_app(PRODUCTION, calls), "GET", "/api/notes", {"Origin": origin})
    assert response.status_code == 200  # simple requests run; the browser withholds the answer
    assert cors_headers(response) == {}
    assert response.headers["vary"] == "Origin"
    assert calls.count == 1


async def test_vary_origin_without_origin_header() -> None:
    response = await call(make_app(PRODUCTION), "GET", "/api/notes")
    assert cors_headers(response) == {}
    assert response.headers["vary"] == "Origin"


@pytest.mark.parametrize(
    ("app_vary", "expected"),
    [("Accept-Encoding", "Accept-Encoding, Origin"), ("origin", "origin"), ("*", "*")],
)
async def test_vary_origin_added_once(app_vary: str, expected: str) -> None:
    response = await call(make_app(PRODUCTION), "GET", f"/varied?vary={app_vary}")
    assert response.headers.get_list("vary") == [expected]


async def test_preflight_from_allowed_origin() -> None:
    calls = Calls()
    app = make_app(cors_middleware(settings(env="production", cors_max_age=1234)), calls)
    response = await call(
        app, "OPTIONS", "/api/notes", preflight(ORIGIN, "PATCH", "authorization, content-type")
    )
    assert response.status_code == 200
    assert cors_headers(response) == {
        "access-control-allow-origin": ORIGIN,
        "access-control-allow-methods": "GET, HEAD, POST, PUT, PATCH, DELETE",
        "access-control-allow-headers": (
            "Accept, Accept-Language, Authorization, Content-Language, Content-Type, "
            "Idempotency-Key, If-Match, If-None-Match, X-Request-ID"
        ),
        "access-control-allow-credentials": "true",
        "access-control-max-age": "1234",
    }
    assert response.headers["vary"] == PREFLIGHT_VARY
    assert calls.count == 0


async def test_preflight_from_disallowed_origin_is_refused_without_cors_headers() -> None:
    calls = Calls()
    response = await call(make_app(PRODUCTION, calls), "OPTIONS", "/api/notes", preflight(EVIL))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert cors_headers(response) == {}
    assert response.headers["vary"] == PREFLIGHT_VARY
    body = orjson.loads(response.content)
    assert body["type"] == "/problems/cors-preflight-rejected"
    assert body["detail"] == "Disallowed CORS origin."
    assert calls.count == 0


async def test_preflight_for_a_method_not_allowed() -> None:
    calls = Calls()
    response = await call(
        make_app(PRODUCTION, calls), "OPTIONS", "/api/notes", preflight(ORIGIN, "PROPFIND")
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert orjson.loads(response.content)["detail"] == "Disallowed CORS method."
    assert calls.count == 0


async def test_preflight_for_a_header_not_allowed() -> None:
    response = await call(
        make_app(PRODUCTION), "OPTIONS", "/api/notes", preflight(ORIGIN, "POST", "x-secret")
    )
    assert response.status_code == 400
    assert orjson.loads(response.content)["detail"] == "Disallowed CORS headers."


async def test_options_without_preflight_headers_reaches_the_app() -> None:
    calls = Calls()
    response = await call(make_app(PRODUCTION, calls), "OPTIONS", "/api/notes", {"Origin": ORIGIN})
    assert response.status_code == 200
    assert calls.count == 1


@pytest.mark.parametrize("env", ["development", "test"])
@pytest.mark.parametrize(
    "origin", ["http://localhost:5173", "http://127.0.0.1:8080", "http://localhost"]
)
async def test_development_allows_localhost(env: str, origin: str) -> None:
    app = make_app(cors_middleware(settings(env=env)))
    response = await call(app, "GET", "/api/notes", {"Origin": origin})
    assert response.headers["access-control-allow-origin"] == origin
    preflight_response = await call(app, "OPTIONS", "/api/notes", preflight(origin))
    assert preflight_response.status_code == 200
    assert preflight_response.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost.evil.net",
        "http://localhost:5173.evil.net",
        "https://localhost:5173",
        "http://127.0.0.1.nip.io",
        "http://evil.net/http://localhost:1",
    ],
)
async def test_development_regex_is_anchored(origin: str) -> None:
    app = make_app(cors_middleware(settings(env="development")))
    response = await call(app, "GET", "/api/notes", {"Origin": origin})
    assert cors_headers(response) == {}


async def test_production_does_not_allow_localhost() -> None:
    response = await call(make_app(PRODUCTION), "GET", "/api/notes", {"Origin": "http://localhost"})
    assert cors_headers(response) == {}


def test_wildcard_with_credentials_refused_by_the_factory() -> None:
    with pytest.raises(CORSConfigurationError, match=r"'\*' while STALWART_CORS_ALLOW_CREDENTIALS"):
        cors_middleware(settings(env="development", cors_origins="*"))


def test_wildcard_with_credentials_refused_by_the_middleware() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    with pytest.raises(CORSConfigurationError, match="reflect every origin"):
        StrictCORSMiddleware(app, allow_origins=["*"], allow_credentials=True)


async def test_wildcard_without_credentials_answers_star() -> None:
    config = settings(env="development", cors_origins="*", cors_allow_credentials=False)
    response = await call(make_app(cors_middleware(config)), "GET", "/api/notes", {"Origin": EVIL})
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    assert response.headers["vary"] == "Origin"


# --- The raw-ASGI fast paths: exact header lists -------------------------------------------

RawHeaders = list[tuple[bytes, bytes]]


async def raw_call(
    request_headers: RawHeaders, response_headers: RawHeaders | tuple[tuple[bytes, bytes], ...]
) -> tuple[list[Message], RawHeaders | tuple[tuple[bytes, bytes], ...]]:
    """One GET through StrictCORSMiddleware; the messages the server got, and the app's list."""
    sent: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        sent.append(message)

    middleware = StrictCORSMiddleware(
        app, allow_origins=[ORIGIN], allow_credentials=True, expose_headers=["X-Request-Id"]
    )
    scope = {"type": "http", "method": "GET", "path": "/", "headers": request_headers}
    await middleware(scope, receive, send)
    return sent, response_headers


async def test_without_origin_several_vary_lines_become_one_with_origin() -> None:
    app_headers = [
        (b"vary", b"Accept-Encoding"),
        (b"content-type", b"application/json"),
        (b"vary", b"Accept-Language"),
    ]
    sent, original = await raw_call([(b"host", b"t")], app_headers)
    assert sent[0]["headers"] == [
        (b"vary", b"Accept-Encoding, Accept-Language, Origin"),
        (b"content-type", b"application/json"),
    ]
    assert sent[1] == {"type": "http.response.body", "body": b"{}"}
    # The app's own list (say a Response's raw_headers) is left as it was.
    assert original == [
        (b"vary", b"Accept-Encoding"),
        (b"content-type", b"application/json"),
        (b"vary", b"Accept-Language"),
    ]


async def test_without_origin_a_tuple_of_headers_gets_vary_appended() -> None:
    sent, _ = await raw_call([(b"host", b"t")], ((b"content-type", b"application/json"),))
    assert sent[0]["headers"] == [(b"content-type", b"application/json"), (b"vary", b"Origin")]


async def test_allowed_origin_replaces_app_cors_headers_and_adds_vary_once() -> None:
    app_headers = [
        (b"access-control-allow-origin", b"*"),
        (b"vary", b"Accept-Encoding"),
        (b"access-control-allow-origin", b"https://other.example"),
    ]
    sent, _ = await raw_call([(b"origin", ORIGIN.encode())], app_headers)
    assert sent[0]["headers"] == [
        (b"access-control-allow-origin", ORIGIN.encode()),
        (b"vary", b"Accept-Encoding, Origin"),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"X-Request-Id"),
    ]


async def test_first_origin_header_decides() -> None:
    sent, _ = await raw_call([(b"origin", EVIL.encode()), (b"origin", ORIGIN.encode())], [])
    assert sent[0]["headers"] == [(b"vary", b"Origin")]
