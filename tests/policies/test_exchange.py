"""policies/exchange.py: one `send` wrapper per request, shared by the policy layers."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Message, Scope

from stalwart.policies.exchange import (
    BLOCK,
    EXCHANGE_KEY,
    PREPARED_FIELDS,
    Exchange,
    RawHeaders,
    is_rendered_block,
    merge_vary,
    render_fields,
    watch,
)

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)


def http_scope() -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "headers": []}


async def test_first_watch_wraps_send_and_inner_watches_pass_it_through() -> None:
    scope: Scope = http_scope()
    server = Recorder()
    outer, outer_send = watch(scope, server)
    assert scope[EXCHANGE_KEY] is outer
    assert outer_send is not server
    inner, inner_send = watch(scope, outer_send)
    assert inner is outer
    assert inner_send is outer_send


async def test_a_copied_scope_gets_an_exchange_of_its_own() -> None:
    scope: Scope = http_scope()
    server = Recorder()
    first, _ = watch(scope, server)
    copy = dict(scope)
    second, second_send = watch(copy, server)
    assert second is not first
    assert second_send is not server
    assert copy[EXCHANGE_KEY] is second


async def test_start_gets_hooks_innermost_first_then_headers_then_one_vary() -> None:
    scope: Scope = http_scope()
    server = Recorder()
    exchange, send = watch(scope, server)
    calls: list[str] = []

    def outer_hook(ex: Exchange, headers: RawHeaders) -> None:
        calls.append("outer")
        headers.append((b"x-outer", b"1"))

    def inner_hook(ex: Exchange, headers: RawHeaders) -> None:
        calls.append("inner")
        assert ex.status == 201
        headers.append((b"x-inner", b"1"))

    exchange.hooks.append(outer_hook)  # registered first: the outer layer
    exchange.hooks.append(inner_hook)
    exchange.headers.append((b"ratelimit", b'"p";r=9;t=60'))
    exchange.vary += [b"Accept-Encoding", b"Origin"]
    app_headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 201, "headers": app_headers})

    assert calls == ["inner", "outer"]
    assert server.messages[0]["headers"] == [
        (b"content-type", b"application/json"),
        (b"x-inner", b"1"),
        (b"x-outer", b"1"),
        (b"ratelimit", b'"p";r=9;t=60'),
        (b"vary", b"Accept-Encoding, Origin"),
    ]
    # The app's own list is never edited: a Response may send the same list again.
    assert app_headers == [(b"content-type", b"application/json")]


async def test_status_and_body_bytes_are_counted() -> None:
    scope: Scope = http_scope()
    exchange, send = watch(scope, Recorder())
    assert exchange.status == 0
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"abc", "more_body": True})
    await send({"type": "http.response.body", "body": b"defgh"})
    assert exchange.status == 404
    assert exchange.body_size == 8


async def test_a_start_with_nothing_to_add_is_passed_on_as_it_is() -> None:
    scope: Scope = http_scope()
    server = Recorder()
    _, send = watch(scope, server)
    headers = [(b"content-length", b"0")]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    assert server.messages[0]["headers"] is headers


@pytest.mark.parametrize(
    ("before", "tokens", "after"),
    [
        ([], [b"Origin"], [(b"vary", b"Origin")]),
        ([], [b"Origin", b"Origin"], [(b"vary", b"Origin")]),
        ([(b"vary", b"Accept-Encoding")], [b"Origin"], [(b"vary", b"Accept-Encoding, Origin")]),
        ([(b"Vary", b"origin")], [b"Origin"], [(b"Vary", b"origin")]),
        ([(b"vary", b"*")], [b"Origin"], [(b"vary", b"*")]),
        (
            [(b"vary", b"Cookie"), (b"x-a", b"1"), (b"vary", b"Accept-Language")],
            [b"Origin"],
            [(b"vary", b"Cookie, Accept-Language, Origin"), (b"x-a", b"1")],
        ),
    ],
)
def test_merge_vary(before: RawHeaders, tokens: list[bytes], after: RawHeaders) -> None:
    headers = list(before)
    merge_vary(headers, tokens)
    assert headers == after


async def test_a_complete_response_unlinks_scope_and_exchange() -> None:
    """Scope -> Exchange -> server send -> scope is a cycle in uvicorn: broken at the end."""
    scope: Scope = http_scope()
    exchange, send = watch(scope, Recorder())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    assert scope[EXCHANGE_KEY] is exchange
    await send({"type": "http.response.body", "body": b"b"})
    assert EXCHANGE_KEY not in scope
    assert exchange.scope is not scope
    assert exchange.status == 200
    assert exchange.body_size == 2


def test_render_fields_writes_head_lines() -> None:
    fields = [(b"x-frame-options", b"DENY"), (b"x-tab", b"a\tb"), (b"x-obs", "caf\u00e9".encode("latin-1"))]
    assert render_fields(fields) == b"x-frame-options: DENY\r\nx-tab: a\tb\r\nx-obs: caf\xe9\r\n"
    assert render_fields([]) == b""


@pytest.mark.parametrize(
    "field",
    [
        (b"X-Frame-Options", b"DENY"),  # servers lower-case names: a block must already be
        (b"x frame", b"DENY"),
        (b"x-a:", b"1"),
        (b"", b"1"),
        (b"x-a", b"1\r\nx-injected: 1"),
        (b"x-a", b"1\n"),
        (b"x-a", b"\x00"),
        (b"x-a", b"\x7f"),
        (b"content-length", b"0"),  # the server acts on these three: never in a block
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"close"),
    ],
)
def test_render_fields_refuses_what_cannot_go_in_a_block(field: tuple[bytes, bytes]) -> None:
    assert render_fields([(b"x-ok", b"1"), field]) is None


async def test_the_block_goes_to_the_server_only_when_it_takes_one() -> None:
    cases = (({PREPARED_FIELDS: {}}, True), ({PREPARED_FIELDS: True}, False), ({}, False), (None, False))
    for extensions, expected in cases:
        scope: Scope = http_scope()
        if extensions is not None:
            scope["extensions"] = extensions
        server = Recorder()
        exchange, send = watch(scope, server)
        assert exchange.prepared is expected

        def hook(ex: Exchange, headers: RawHeaders) -> None:
            if ex.prepared:
                ex.block += b"x-a: 1\r\n"
            else:
                headers.append((b"x-a", b"1"))

        exchange.hooks.append(hook)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        start = server.messages[0]
        assert PREPARED_FIELDS not in start  # in the request's dict, never in the message
        if expected:
            assert scope["extensions"][PREPARED_FIELDS] == {BLOCK: b"x-a: 1\r\n"}
            assert start["headers"] == []
        else:
            assert start["headers"] == [(b"x-a", b"1")]


async def test_a_block_from_an_inner_exchange_reaches_the_outer_hooks_as_fields() -> None:
    slot: dict[str, object] = {}
    scope: Scope = {**http_scope(), "extensions": {PREPARED_FIELDS: slot}}
    server = Recorder()
    outer, outer_send = watch(scope, server)
    seen: list[RawHeaders] = []
    outer.hooks.append(lambda ex, headers: seen.append(list(headers)))
    inner, inner_send = watch(dict(scope), outer_send)  # a copy of the scope: its own Exchange
    assert inner is not outer

    def hook(ex: Exchange, headers: RawHeaders) -> None:
        ex.block += b"x-a: 1\r\nx-b: 2 3\r\n"

    inner.hooks.append(hook)
    await inner_send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    assert seen == [[(b"content-length", b"0"), (b"x-a", b"1"), (b"x-b", b"2 3")]]
    assert slot == {}  # the outer hooks added no block of their own
    assert server.messages[0]["headers"] == [(b"content-length", b"0"), (b"x-a", b"1"), (b"x-b", b"2 3")]


async def test_a_bad_block_left_by_an_inner_layer_is_refused() -> None:
    slot: dict[str, object] = {BLOCK: b"x-a: 1\r\n\r\nHTTP/1.1 200 OK\r\n"}
    scope: Scope = {**http_scope(), "extensions": {PREPARED_FIELDS: slot}}
    exchange, send = watch(scope, Recorder())
    exchange.headers.append((b"x-b", b"1"))
    with pytest.raises(RuntimeError, match="Invalid prepared header block"):
        await send({"type": "http.response.start", "status": 200, "headers": []})


async def test_each_response_start_builds_its_own_block() -> None:
    slot: dict[str, object] = {}
    scope: Scope = {**http_scope(), "extensions": {PREPARED_FIELDS: slot}}
    server = Recorder()
    exchange, send = watch(scope, server)
    blocks = []

    def hook(ex: Exchange, headers: RawHeaders) -> None:
        ex.block += b"x-a: 1\r\n"
        ex.block_names = frozenset({b"x-a"})

    exchange.hooks.append(hook)
    for _ in range(2):  # a server other than uvicorn may let a layer start twice
        await send({"type": "http.response.start", "status": 200, "headers": []})
        blocks.append(slot.pop(BLOCK))
    assert blocks == [b"x-a: 1\r\n", b"x-a: 1\r\n"]


@pytest.mark.parametrize(
    ("block", "valid"),
    [
        (b"", True),
        (b"x-a: 1\r\nx-b: \r\n", True),
        (b"x-a: 1\r\n\r\n", False),
        (b"x-a: 1\r\nx-content-length: 2\r\n", True),
        (b"x-a: 1\r\ncontent-length: 2\r\n", False),
        (b"x-a: 1\rx-b: 2\r\n", False),
        ("x-a: 1\r\n", False),
    ],
)
def test_is_rendered_block(block: object, valid: bool) -> None:
    assert is_rendered_block(block) is valid
