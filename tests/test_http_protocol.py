"""The fast response head writes what uvicorn writes, and refuses what uvicorn refuses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from stalwart.http_protocol import FastHeadCycle, HttpToolsProtocol

Headers = list[tuple[bytes, bytes]]

# What the policy adds to every response: more than enough fields for the fast path.
POLICY_FIELDS: Headers = [
    (b"Content-Security-Policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"X-Frame-Options", b"DENY"),
    (b"Cross-Origin-Opener-Policy", b"same-origin"),
    (b"Cross-Origin-Resource-Policy", b"same-origin"),
    (b"Origin-Agent-Cluster", b"?1"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Strict-Transport-Security", b"max-age=31536000; includeSubDomains"),
    (b"X-Request-ID", b"12b073e214d6075e775f135003b65181"),
    (b"Vary", b"Origin, Accept-Encoding"),
]


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def run(
    cls: type[RequestResponseCycle],
    messages: list[dict[str, Any]] | Callable[[], list[dict[str, Any]]],
    *,
    method: str = "GET",
    keep_alive: bool = True,
) -> tuple[object, ...]:
    """Send `messages` through a cycle of `cls`: what it wrote, its state, or what it raised."""
    transport = Transport()

    async def go() -> tuple[object, ...]:
        cycle = cls(
            scope={"type": "http", "method": method, "headers": [], "http_version": "1.1"},
            transport=transport,  # type: ignore[arg-type]
            flow=FlowControl(transport),  # type: ignore[arg-type]
            logger=None,  # type: ignore[arg-type]
            access_logger=None,  # type: ignore[arg-type]
            access_log=False,
            default_headers=[(b"date", b"Thu, 26 Nov 2026 23:02:38 GMT")],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=lambda: None,
        )

        def state() -> tuple[object, ...]:
            return (
                cycle.response_started,
                cycle.response_complete,
                cycle.keep_alive,
                cycle.chunked_encoding,
                cycle.expected_content_length,
                transport.closed,
            )

        try:
            for message in messages() if callable(messages) else messages:
                await cycle.send(message)  # type: ignore[arg-type]
        except Exception as exc:
            return ("raised", type(exc), str(exc), transport.written, *state())
        return (b"".join(transport.written), *state())

    return asyncio.run(go())


def both(headers: Headers, body: bytes = b"", status: int = 200, **kwargs: Any) -> tuple[object, object]:
    messages = [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]
    return run(RequestResponseCycle, messages, **kwargs), run(FastHeadCycle, messages, **kwargs)


@pytest.mark.parametrize(
    ("headers", "body", "status", "method", "keep_alive"),
    [
        ([(b"Content-Length", b"2"), (b"Content-Type", b"text/plain"), *POLICY_FIELDS], b"ok", 200, "GET", True),
        ([*POLICY_FIELDS, (b"content-length", b"2")], b"ok", 200, "HEAD", True),
        ([*POLICY_FIELDS], b"chunk", 200, "GET", True),  # no length: chunked
        ([*POLICY_FIELDS, (b"Transfer-Encoding", b"CHUNKED")], b"chunk", 200, "GET", True),
        ([*POLICY_FIELDS], b"", 204, "GET", True),
        ([*POLICY_FIELDS], b"", 304, "GET", True),
        ([*POLICY_FIELDS, (b"Connection", b"Keep-Alive, Close"), (b"Content-Length", b"0")], b"", 200, "GET", True),
        ([*POLICY_FIELDS, (b"Content-Length", b"0")], b"", 200, "GET", False),  # adds connection: close
        (
            [*POLICY_FIELDS, (b"X-Obs-Text", "caf\u00e9".encode("latin-1")), (b"X-Tab", b"a\tb"), (b"X-Empty", b"")],
            b"",
            404,
            "GET",
            True,
        ),
        ([(b"Content-Length", b"3"), (b"Content-Length", b"5"), *POLICY_FIELDS], b"abc", 200, "GET", True),
        ([*POLICY_FIELDS, (b"Content-Length", b"2")], b"toolong", 200, "GET", True),  # uvicorn's error
    ],
)
def test_the_head_and_state_are_uvicorns(
    headers: Headers, body: bytes, status: int, method: str, keep_alive: bool
) -> None:
    uvicorn_result, fast_result = both(headers, body, status, method=method, keep_alive=keep_alive)
    assert fast_result == uvicorn_result


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ((b"X-Bad Name", b"v"), "Invalid HTTP header name."),
        ((b"X-Bad:Name", b"v"), "Invalid HTTP header name."),
        ((b"X-Injected", b"v\r\nSet-Cookie: a=b"), "Invalid HTTP header value."),
        ((b"X-Nul", b"v\x00"), "Invalid HTTP header value."),
        ((b"X-Del", b"v\x7f"), "Invalid HTTP header value."),
    ],
)
def test_a_bad_field_is_refused_with_uvicorns_error_and_nothing_written(
    field: tuple[bytes, bytes], message: str
) -> None:
    uvicorn_result, fast_result = both([*POLICY_FIELDS, field, (b"Content-Length", b"0")])
    assert fast_result == uvicorn_result
    assert fast_result[:4] == ("raised", RuntimeError, message, [])


@pytest.mark.parametrize(
    "fields",
    [
        [(b"Content-Length", b"5"), (b"X-A", b"1")],  # short head
        [*POLICY_FIELDS, (b"Content-Length", b"5")],  # long head
        [*POLICY_FIELDS, (b"X-Injected", b"v\r\nSet-Cookie: a=b")],  # refused
    ],
)
def test_headers_given_as_a_one_shot_iterable_are_read_once(fields: Headers) -> None:
    def messages() -> list[dict[str, Any]]:
        one_shot: Iterator[tuple[bytes, bytes]] = iter(fields)
        return [
            {"type": "http.response.start", "status": 200, "headers": one_shot},
            {"type": "http.response.body", "body": b"hello"},
        ]

    uvicorn_result = run(RequestResponseCycle, messages)
    assert run(FastHeadCycle, messages) == uvicorn_result
    if fields[-1][0] == b"X-Injected":
        assert uvicorn_result[:3] == ("raised", RuntimeError, "Invalid HTTP header value.")
    else:
        assert isinstance(uvicorn_result[0], bytes)
        assert b"content-length: 5\r\n" in uvicorn_result[0]


@pytest.mark.parametrize("start", [{"headers": POLICY_FIELDS}, {"status": 999, "headers": POLICY_FIELDS}])
def test_a_start_without_a_valid_status_fails_in_uvicorns_state(start: dict[str, Any]) -> None:
    message = {"type": "http.response.start", **start}
    uvicorn_result = run(RequestResponseCycle, [message])
    assert run(FastHeadCycle, [message]) == uvicorn_result
    assert uvicorn_result[:2] == ("raised", KeyError)
    assert uvicorn_result[4] is True  # response_started: uvicorn then closes the connection


def test_send_returns_a_coroutine_that_does_the_work_when_awaited() -> None:
    transport = Transport()

    async def go() -> None:
        cycle = FastHeadCycle(
            scope={"type": "http", "method": "GET", "headers": [], "http_version": "1.1"},
            transport=transport,  # type: ignore[arg-type]
            flow=FlowControl(transport),  # type: ignore[arg-type]
            logger=None,  # type: ignore[arg-type]
            access_logger=None,  # type: ignore[arg-type]
            access_log=False,
            default_headers=[],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=True,
            on_response=lambda: None,
        )
        pending = cycle.send({"type": "http.response.start", "status": 200, "headers": POLICY_FIELDS})
        assert asyncio.iscoroutine(pending)
        assert transport.written == []  # nothing happens until it is awaited (or run as a task)
        await asyncio.create_task(pending)
        assert transport.written[0].startswith(b"HTTP/1.1 200 OK\r\ncontent-security-policy: ")

    asyncio.run(go())


def test_short_heads_and_bodies_take_uvicorns_path() -> None:
    # A head of a few fields is uvicorn's own code: the same bytes, and the fast path is unused.
    uvicorn_result, fast_result = both([(b"Content-Length", b"2")], b"ok")
    assert fast_result == uvicorn_result
    assert isinstance(fast_result[0], bytes)
    assert fast_result[0].startswith(b"HTTP/1.1 200 OK\r\ndate: ")


_token = st.binary(min_size=0, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    extra=st.lists(st.tuples(_token, _token), max_size=12),
    status=st.sampled_from([200, 204, 304, 404, 500]),
    method=st.sampled_from(["GET", "HEAD"]),
    keep_alive=st.booleans(),
)
def test_any_head_gives_the_same_result(extra: Headers, status: int, method: str, keep_alive: bool) -> None:
    uvicorn_result, fast_result = both([*POLICY_FIELDS, *extra], status=status, method=method, keep_alive=keep_alive)
    assert fast_result == uvicorn_result


def test_the_served_protocol_uses_the_fast_cycle() -> None:
    # The class swap happens before the app's first `send`: the app sees FastHeadCycle.send.
    seen: list[type] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        seen.append(type(send.__self__))
        await send(
            {"type": "http.response.start", "status": 200, "headers": [*POLICY_FIELDS, (b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    import uvicorn

    async def main() -> httpx.Response:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, http=HttpToolsProtocol, lifespan="off", log_level="warning"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient() as client:
                return await client.get(f"http://127.0.0.1:{port}/")
        finally:
            server.should_exit = True
            await task

    response = asyncio.run(main())
    assert seen == [FastHeadCycle]
    assert response.status_code == 200
    assert response.text == "ok"
    assert response.headers["x-request-id"] == "12b073e214d6075e775f135003b65181"
    assert response.headers["vary"] == "Origin, Accept-Encoding"
