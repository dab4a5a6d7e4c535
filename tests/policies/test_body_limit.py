"""BodyLimitMiddleware: 413 while streaming, 415 on JSON endpoints, JSON depth bound."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from stalwart.policies.body_limit import (
    BodyLimitMiddleware,
    body_limit_middleware,
    json_depth_exceeds,
)
from stalwart.policies.errors import install_error_handlers
from stalwart.settings import Settings

pytestmark = pytest.mark.anyio

LIMIT = 1000


class Seen:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []


class Note(BaseModel):
    title: str


def make_app(seen: Seen, limit: int = LIMIT, depth: int = 5) -> FastAPI:
    """A FastAPI app with the service's problem handlers, as in the real stack."""
    app = FastAPI()

    @app.post("/api/notes")
    async def create(note: Note) -> dict[str, str]:
        return {"title": note.title}

    @app.api_route("/api/raw", methods=["POST", "PUT", "PATCH", "GET"])
    async def api_raw(request: Request) -> dict[str, int]:
        body = await request.body()
        seen.bodies.append(body)
        return {"size": len(body)}

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        body = await request.body()
        seen.bodies.append(body)
        return {"size": len(body)}

    install_error_handlers(app, Settings(_env_file=None))
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limit, max_json_depth=depth)
    return app


async def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path, **kwargs)


def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    async def generate() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    return generate()


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = orjson.loads(response.content)
    assert body["status"] == status
    return body


# --- size --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/upload", "/api/raw", "/api/notes"])
async def test_content_length_above_the_limit_is_413_without_running_the_app(path: str) -> None:
    seen = Seen()
    response = await call(
        make_app(seen),
        "POST",
        path,
        content=b"x" * (LIMIT + 1),
        headers={"content-type": "application/json"},
    )
    body = problem(response, 413)
    assert body["type"] == "/problems/content-too-large"
    assert body["max_bytes"] == LIMIT
    assert seen.bodies == []


async def test_content_length_at_the_limit_passes() -> None:
    seen = Seen()
    response = await call(make_app(seen), "POST", "/upload", content=b"x" * LIMIT)
    assert response.json() == {"size": LIMIT}


async def test_content_length_413_does_not_read_the_body() -> None:
    received: list[Message] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
        raise AssertionError("the app must not run")

    async def receive() -> Message:  # pragma: no cover
        received.append({})
        return {"type": "http.request", "body": b"x", "more_body": True}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "headers": [(b"content-length", b"5000000")],
    }
    await BodyLimitMiddleware(app, max_body_bytes=LIMIT)(scope, receive, send)
    assert received == []
    assert sent[0]["status"] == 413


@pytest.mark.parametrize("path", ["/upload", "/api/raw"])
async def test_chunked_body_crossing_the_limit_is_413(path: str) -> None:
    seen = Seen()
    response = await call(
        make_app(seen),
        "POST",
        path,
        content=chunks(b"x" * 600, b"y" * 600, b"z" * 600),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    body = problem(response, 413)
    assert body["type"] == "/problems/content-too-large"
    assert seen.bodies == []  # the app never got a truncated body


async def test_chunked_body_under_the_limit_arrives_whole() -> None:
    seen = Seen()
    response = await call(make_app(seen), "POST", "/upload", content=chunks(b"a" * 500, b"b" * 500))
    assert response.json() == {"size": 1000}
    assert seen.bodies == [b"a" * 500 + b"b" * 500]


async def test_app_swallowing_the_error_still_answers_413() -> None:
    async def careless(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception:
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial ok"})

    app = BodyLimitMiddleware(careless, max_body_bytes=LIMIT)
    response = await call(app, "POST", "/upload", content=chunks(b"x" * 800, b"x" * 800))
    assert problem(response, 413)["max_bytes"] == LIMIT


async def test_raw_app_without_handlers_gets_413_problem() -> None:
    async def reader(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        raise AssertionError("unreachable")  # pragma: no cover

    app = BodyLimitMiddleware(reader, max_body_bytes=LIMIT)
    response = await call(app, "PUT", "/upload", content=chunks(b"x" * 800, b"x" * 800))
    problem(response, 413)


async def test_plain_starlette_app_gets_413() -> None:
    async def endpoint(request: Any) -> Response:
        await request.body()
        return JSONResponse({})  # pragma: no cover

    app = Starlette(
        routes=[Route("/upload", endpoint, methods=["POST"])],
        middleware=[Middleware(BodyLimitMiddleware, max_body_bytes=LIMIT)],
    )
    response = await call(app, "POST", "/upload", content=chunks(b"x" * 800, b"x" * 800))
    assert response.status_code == 413


# --- content type -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "text/json",
        None,
    ],
)
async def test_wrong_content_type_on_json_endpoint_is_415(
    method: str, content_type: str | None
) -> None:
    seen = Seen()
    headers = {"content-type": content_type} if content_type else {}
    response = await call(make_app(seen), method, "/api/raw", content=b"{}", headers=headers)
    body = problem(response, 415)
    assert body["type"] == "/problems/unsupported-media-type"
    assert response.headers["accept"] == "application/json"
    assert seen.bodies == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ],
)
async def test_json_content_types_are_accepted(content_type: str) -> None:
    seen = Seen()
    response = await call(
        make_app(seen),
        "PATCH",
        "/api/raw",
        content=b'{"a": 1}',
        headers={"content-type": content_type},
    )
    assert response.status_code == 200
    assert seen.bodies == [b'{"a": 1}']


async def test_bodyless_post_and_non_api_paths_are_not_checked() -> None:
    seen = Seen()
    app = make_app(seen)
    assert (await call(app, "POST", "/api/raw")).status_code == 200
    assert (
        await call(app, "POST", "/upload", content=b"x", headers={"content-type": "text/plain"})
    ).status_code == 200
    assert (await call(app, "GET", "/api/raw")).status_code == 200


async def test_chunked_body_with_wrong_type_is_415() -> None:
    response = await call(
        make_app(Seen()),
        "POST",
        "/api/raw",
        content=chunks(b"a", b"b"),
        headers={"content-type": "text/plain"},
    )
    problem(response, 415)


# --- JSON depth -----------------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


async def test_json_at_the_depth_limit_passes() -> None:
    seen = Seen()
    response = await call(
        make_app(seen, depth=5),
        "POST",
        "/api/raw",
        content=nested(5),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200
    assert seen.bodies == [nested(5)]


async def test_json_deeper_than_the_limit_is_400_before_the_app() -> None:
    seen = Seen()
    response = await call(
        make_app(seen, depth=5),
        "POST",
        "/api/raw",
        content=b"[" * 3 + nested(3) + b"]" * 3,
        headers={"content-type": "application/json"},
    )
    body = problem(response, 400)
    assert body["type"] == "/problems/json-too-deep"
    assert body["max_depth"] == 5
    assert seen.bodies == []


async def test_deep_json_through_a_pydantic_endpoint() -> None:
    response = await call(
        make_app(Seen(), depth=3), "POST", "/api/notes", json={"title": [[[["x"]]]]}
    )
    problem(response, 400)
    ok = await call(make_app(Seen(), depth=3), "POST", "/api/notes", json={"title": "x"})
    assert ok.json() == {"title": "x"}


async def test_buffered_chunks_are_replayed_whole() -> None:
    seen = Seen()
    response = await call(
        make_app(seen),
        "POST",
        "/api/raw",
        content=chunks(b'{"a": ', b'"', b"x" * 100, b'"}'),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200
    assert seen.bodies == [b'{"a": "' + b"x" * 100 + b'"}']


@pytest.mark.parametrize(
    ("http_version", "headers", "unwrapped"),
    [
        ("1.1", [(b"host", b"x"), (b"user-agent", b"t")], True),
        ("1.0", [], True),
        ("1.1", [(b"content-length", b"0")], True),
        ("2", [(b"content-length", b"0")], True),
        # HTTP/2 can stream a body without any length header: it must still be counted.
        ("2", [(b"host", b"x")], False),
        ("1.1", [(b"content-length", b"5")], False),
    ],
)
async def test_bodyless_request_gets_the_servers_own_receive_and_send(
    http_version: str, headers: list[tuple[bytes, bytes]], unwrapped: bool
) -> None:
    got: list[tuple[Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append((receive, send))

    async def receive() -> Message:  # pragma: no cover
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:  # pragma: no cover
        pass

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/raw",
        "http_version": http_version,
        "headers": headers,
    }
    await BodyLimitMiddleware(app)(scope, receive, send)
    assert len(got) == 1
    assert (got[0][0] is receive and got[0][1] is send) is unwrapped


async def test_disconnect_while_buffering_sends_nothing() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
        raise AssertionError("the app must not run")

    messages: list[Message] = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/raw",
        "http_version": "1.1",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
    }
    await BodyLimitMiddleware(app)(scope, receive, send)
    assert sent == []


@pytest.mark.parametrize(
    ("body", "depth", "exceeds"),
    [
        (b"{}", 1, False),
        (b"[[]]", 1, True),
        (b"[[]]", 2, False),
        (b'["[[[[[[", "{{{{{"]', 1, False),
        (b'["\\"[[[[", "\\\\", [[1]]]', 2, True),
        (b'["\\"[[[[", "\\\\", [[1]]]', 3, False),
        (b"[1, [2], [3], [4], [5], [6]]", 2, False),
        (b"[[[[[[", 2, False),  # unbalanced: not JSON, left for the parser to refuse
        (b'"unterminated [[[[[[[]]]]]]]', 2, False),
        (b'{"a": {"b": {"c": []}}}', 3, True),
        (b'{"a": {"b": {"c": []}}}', 4, False),
    ],
)
def test_json_depth_exceeds(body: bytes, depth: int, exceeds: bool) -> None:
    assert json_depth_exceeds(body, depth) is exceeds


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:', max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)


def depth_of(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=JSON, limit=st.integers(min_value=1, max_value=8))
def test_json_depth_matches_a_parser(value: object, limit: int) -> None:
    body = json.dumps(value).encode()
    assert json_depth_exceeds(body, limit) is (depth_of(value) > limit)


@pytest.mark.parametrize(
    "body",
    [
        b'"\\' * 500_000,  # every quote escaped: no string ever closes
        b'"' * 1_000_000,
        b"[" * 1_000_000,
        b"[]" * 500_000,
        b'["a",' * 200_000,
    ],
)
def test_depth_scan_is_linear_on_hostile_bodies(body: bytes) -> None:
    started = time.perf_counter()
    json_depth_exceeds(body, 32)
    assert time.perf_counter() - started < 1.0


def test_factory_uses_settings() -> None:
    config = Settings(_env_file=None, max_body_bytes=2048, max_json_depth=7)
    middleware = body_limit_middleware(config)
    factory: object = middleware.cls
    assert factory is BodyLimitMiddleware
    assert middleware.kwargs == {"max_body_bytes": 2048, "max_json_depth": 7}
    assert Settings(_env_file=None).max_body_bytes == 1_048_576
