"""Connection: close on every response once the process drains."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from stalwart.policies.shutdown import DrainState, ShutdownMiddleware, drain_state, is_draining
from stalwart.policies.stack import policy_middleware
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hi")


async def keep_alive(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hi", headers={"Connection": "keep-alive"})


def build(state: DrainState) -> Starlette:
    app = Starlette(routes=[Route("/", hello), Route("/ka", keep_alive)])
    app.add_middleware(ShutdownMiddleware, state=state)
    return app


async def get(app: Starlette, path: str = "/") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.get(path)


async def test_no_connection_header_while_serving_normally() -> None:
    r = await get(build(DrainState()))
    assert r.status_code == 200
    assert "connection" not in r.headers


async def test_connection_close_once_draining() -> None:
    state = DrainState()
    app = build(state)
    state.begin()
    r = await get(app)
    assert r.status_code == 200
    assert r.headers["connection"] == "close"
    assert r.text == "hi"
    r = await get(app, "/ka")
    assert r.headers.get_list("connection") == ["close"]


async def test_drain_that_begins_mid_request_still_closes() -> None:
    state = DrainState()

    async def slow(request: Request) -> PlainTextResponse:
        state.begin()  # the signal arrives while this request runs
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", slow)])
    app.add_middleware(ShutdownMiddleware, state=state)
    r = await get(app)
    assert r.status_code == 200
    assert r.headers["connection"] == "close"


def test_drain_state_records_when_it_began() -> None:
    state = DrainState()
    assert state.since is None
    state.begin()
    first = state.since
    state.begin()
    assert state.draining is True
    assert state.since == first
    state.reset()
    assert state.draining is False


def test_process_wide_state_and_reader() -> None:
    assert ShutdownMiddleware(build(DrainState())).state is drain_state
    assert is_draining() is drain_state.draining


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        return None

    state = DrainState()
    state.begin()
    await ShutdownMiddleware(app, state)({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]


def test_shutdown_is_wired_in_the_policy_stack(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    classes = [m.cls for m in policy_middleware(make_settings(tmp_path))]
    assert ShutdownMiddleware in classes
