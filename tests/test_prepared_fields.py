"""stalwart/prepared_fields.py: a prepared block goes into uvicorn's head, and nothing else changes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from stalwart.policies.exchange import BLOCK, PREPARED_FIELDS, render_fields
from stalwart.prepared_fields import PreparedFieldsCycle

Headers = list[tuple[bytes, bytes]]

POLICY_FIELDS: Headers = [
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
]
POLICY_BLOCK = render_fields(POLICY_FIELDS)
DATE = (b"date", b"Fri, 27 Nov 2026 01:00:00 GMT")


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


def new_cycle(
    cls: type[RequestResponseCycle], transport: Transport, method: str, keep_alive: bool, block: object = None
) -> Any:
    cycle = cls(
        scope={"type": "http", "method": method, "headers": [], "http_version": "1.1"},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=None,  # type: ignore[arg-type]
        access_logger=None,  # type: ignore[arg-type]
        access_log=False,
        default_headers=[DATE],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )
    if cls is PreparedFieldsCycle:
        # As PreparedFieldsProtocol sets it up; the app leaves its block there.
        cycle.prepared = {} if block is None else {BLOCK: block}
    return cycle


def run(
    cls: type[RequestResponseCycle],
    messages: list[dict[str, Any]],
    *,
    method: str = "GET",
    keep_alive: bool = True,
    block: object = None,
) -> tuple[object, ...]:
    """Send `messages` through a cycle of `cls`: what it wrote and its state, or what it raised."""
    transport = Transport()

    async def go() -> tuple[object, ...]:
        cycle = new_cycle(cls, transport, method, keep_alive, block)
        try:
            for message in messages:
                await cycle.send(message)
        except Exception as exc:
            return ("raised", type(exc), str(exc), transport.written)
        assert isinstance(cycle.transport, Transport)  # the stand-in is gone
        return (
            transport.written,
            cycle.response_started,
            cycle.response_complete,
            cycle.keep_alive,
            cycle.chunked_encoding,
            cycle.expected_content_length,
            transport.closed,
        )

    return asyncio.run(go())


def head_lines(written: list[bytes]) -> tuple[bytes, list[bytes], bytes]:
    """Status line, the sorted field lines and the rest of what was written."""
    data = b"".join(written)
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep
    status, *fields = head.split(b"\r\n")
    return status, sorted(fields), rest


def responses(headers: Headers, body: bytes, status: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same response: policy fields in `headers` (uvicorn), and without them (the block)."""
    plain = [
        {"type": "http.response.start", "status": status, "headers": [*headers, *POLICY_FIELDS]},
        {"type": "http.response.body", "body": body},
    ]
    prepared = [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]
    return plain, prepared


@pytest.mark.parametrize(
    ("headers", "body", "status", "method", "keep_alive"),
    [
        ([(b"Content-Length", b"2"), (b"Content-Type", b"text/plain")], b"ok", 200, "GET", True),
        ([(b"content-length", b"2")], b"ok", 200, "HEAD", True),
        ([], b"chunk", 200, "GET", True),  # no length: uvicorn chunks the body
        ([(b"Transfer-Encoding", b"CHUNKED")], b"chunk", 200, "GET", True),
        ([], b"", 204, "GET", True),
        ([], b"", 304, "GET", True),
        ([(b"Connection", b"Keep-Alive, Close"), (b"Content-Length", b"0")], b"", 200, "GET", True),
        ([(b"Content-Length", b"0")], b"", 200, "GET", False),  # uvicorn adds connection: close
        ([(b"content-length", b"3"), (b"x-tab", b"a\tb")], b"abc", 404, "GET", True),
    ],
)
def test_the_block_lands_in_the_head_and_everything_else_is_uvicorns(
    headers: Headers, body: bytes, status: int, method: str, keep_alive: bool
) -> None:
    plain, prepared = responses(headers, body, status)
    expected = run(RequestResponseCycle, plain, method=method, keep_alive=keep_alive)
    actual = run(PreparedFieldsCycle, prepared, method=method, keep_alive=keep_alive, block=POLICY_BLOCK)
    assert actual[1:] == expected[1:]  # response state, keep-alive, framing
    assert head_lines(actual[0]) == head_lines(expected[0])  # type: ignore[arg-type]
    # One write for the head, as uvicorn makes it; the block ends before the blank line.
    head = actual[0][0]  # type: ignore[index]
    assert head.endswith(POLICY_BLOCK + b"\r\n")  # type: ignore[operator]
    assert head.count(b"\r\n\r\n") == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("slot_block", [None, b""])
def test_without_a_block_the_bytes_are_uvicorns(slot_block: bytes | None) -> None:
    messages = [
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2"), *POLICY_FIELDS]},
        {"type": "http.response.body", "body": b"ok"},
    ]
    assert run(PreparedFieldsCycle, messages, block=slot_block) == run(RequestResponseCycle, messages)


def test_a_bad_field_beside_a_block_fails_as_in_uvicorn() -> None:
    bad: Headers = [(b"x-bad", b"a\r\nb")]
    plain, prepared = responses(bad, b"", 200)
    expected = run(RequestResponseCycle, plain)
    actual = run(PreparedFieldsCycle, prepared, block=POLICY_BLOCK)
    assert actual == expected
    assert actual[:3] == ("raised", RuntimeError, "Invalid HTTP header value.")


def test_a_block_in_a_message_is_not_taken() -> None:
    """Only the request's extension dict carries a block: a message key is no way in."""
    messages = [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"2")],
            PREPARED_FIELDS: POLICY_BLOCK,
        },
        {"type": "http.response.body", "body": b"ok", PREPARED_FIELDS: POLICY_BLOCK},
    ]
    written = run(PreparedFieldsCycle, messages)[0]
    assert written == run(RequestResponseCycle, messages)[0]
    assert b"x-frame-options" not in b"".join(written)  # type: ignore[arg-type]


@pytest.mark.parametrize("paused_again", [False, True])
def test_a_paused_transport_is_waited_for_before_the_head(paused_again: bool) -> None:
    transport = Transport()

    async def go() -> None:
        cycle = new_cycle(PreparedFieldsCycle, transport, "GET", True, POLICY_BLOCK)
        cycle.flow.pause_writing()
        start = {"type": "http.response.start", "status": 200, "headers": []}
        sending = asyncio.ensure_future(cycle.send(start))
        await asyncio.sleep(0)
        if paused_again:
            # Resumed, and paused again before the sender ran: it must wait again.
            cycle.flow.resume_writing()
            cycle.flow.pause_writing()
        for _ in range(3):
            await asyncio.sleep(0)
        assert transport.written == []  # waiting, with the real transport in place
        assert cycle.transport is transport
        cycle.flow.resume_writing()
        await sending
        assert transport.written[0].endswith(POLICY_BLOCK + b"\r\n")  # type: ignore[operator]
        assert cycle.transport is transport

    asyncio.run(go())


@pytest.mark.parametrize(
    "block",
    [
        b"x-a: 1\r\nx-b: 2\r\n\r\nHTTP/1.1 200 OK\r\n",  # a second response smuggled in
        b"x-a: 1\nx-b: 2\r\n",
        b"x-a: 1",  # no line end
        b"X-A: 1\r\n",
        b"content-length: 0\r\n",
        b"connection: close\r\n",
        b"x-a: \x00\r\n",
        "x-a: 1\r\n",  # not bytes
        "",
        [(b"x-a", b"1")],
        [],
        bytearray(b"x-a: 1\r\n"),
    ],
)
def test_a_block_the_policy_could_not_have_rendered_is_refused_before_the_response_starts(block: object) -> None:
    messages = [{"type": "http.response.start", "status": 200, "headers": []}]
    result = run(PreparedFieldsCycle, messages, block=block)
    assert result == ("raised", RuntimeError, "Invalid prepared header block.", [])
