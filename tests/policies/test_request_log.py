"""Request ids and the access-log line (src/stalwart/policies/request_log.py)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.policies.errors import ErrorMiddleware
from stalwart.policies.request_log import (
    ACCESS_LOG,
    AccessLogWriter,
    RequestLogMiddleware,
    anonymize_ip,
    is_valid_request_id,
    new_request_id,
)
from stalwart.policies.stack import policy_middleware
from stalwart.policies.timestamps import utc_timestamp
from stalwart.settings import Settings

pytestmark = pytest.mark.anyio

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
HEX32 = re.compile(r"[0-9a-f]{32}")


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int, request: Request) -> dict[str, Any]:
        return {"id": item_id, "request_id": request.state.request_id}

    @app.get("/me")
    async def me(request: Request) -> PlainTextResponse:
        request.state.account_id = 7
        return PlainTextResponse("me")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    @app.get("/unavailable")
    async def unavailable() -> PlainTextResponse:
        return PlainTextResponse("later", status_code=503)

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> Any:
            yield b"abc"
            yield b"defgh"

        return StreamingResponse(chunks())

    @app.get("/slow")
    async def slow() -> PlainTextResponse:
        await asyncio.sleep(0.02)
        return PlainTextResponse("ok")

    return app


class Captured:
    def __init__(self) -> None:
        self.raw: list[bytes] = []

    def __call__(self, line: bytes) -> None:
        self.raw.append(line)

    @property
    def lines(self) -> list[dict[str, Any]]:
        for raw in self.raw:
            assert raw.endswith(b"\n")
            assert raw.count(b"\n") == 1
        return [orjson.loads(raw) for raw in self.raw]

    def only(self) -> dict[str, Any]:
        assert len(self.raw) == 1, self.raw
        return self.lines[0]


def wrap(app: FastAPI, sink: Captured, *, errors: bool = True, **kwargs: Any) -> ASGIApp:
    # The same way the policy stack installs it: inside the app's own ServerErrorMiddleware.
    if errors:
        app.add_middleware(ErrorMiddleware)
    app.add_middleware(RequestLogMiddleware, sink=sink, **kwargs)
    return app


def client_for(app: ASGIApp, client: tuple[str, int] = ("203.0.113.7", 40000)) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def stable(line: dict[str, Any]) -> dict[str, Any]:
    """The line with the two fields that vary per run checked and replaced."""
    assert TIMESTAMP.fullmatch(line["timestamp"]), line["timestamp"]
    assert isinstance(line["duration_ms"], float | int)
    assert line["duration_ms"] >= 0
    return {**line, "timestamp": "T", "duration_ms": "D"}


async def test_line_has_exact_fields_for_a_routed_request() -> None:
    sink = Captured()
    async with client_for(wrap(make_app(), sink)) as client:
        response = await client.get(
            "/items/42?secret=zzz-query-value",
            headers={"User-Agent": "probe/1.0", "X-Request-ID": "req-42"},
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-42"
    assert response.json() == {"id": 42, "request_id": "req-42"}
    assert stable(sink.only()) == {
        "timestamp": "T",
        "level": "INFO",
        "logger": "stalwart.access",
        "request.id": "req-42",
        "client.address": "203.0.113.7",
        "http.request.method": "GET",
        "http.route": "/items/{item_id}",
        "url.path": "/items/42",
        "http.response.status_code": 200,
        "duration_ms": "D",
        "http.response.body.size": len(response.content),
        "user_agent.original": "probe/1.0",
    }
    # Field order is part of the format: people read these lines too.
    assert list(sink.only()) == [
        "timestamp",
        "level",
        "logger",
        "request.id",
        "client.address",
        "http.request.method",
        "http.route",
        "url.path",
        "http.response.status_code",
        "duration_ms",
        "http.response.body.size",
        "user_agent.original",
    ]


async def test_unmatched_path_is_logged_without_route() -> None:
    sink = Captured()
    async with client_for(wrap(make_app(), sink)) as client:
        response = await client.get("/nowhere/at/all", headers={"User-Agent": "x"})
    assert response.status_code == 404
    line = sink.only()
    assert "http.route" not in line
    assert line["url.path"] == "/nowhere/at/all"
    assert line["http.response.status_code"] == 404
    assert line["level"] == "INFO"
    assert line["http.response.body.size"] == len(response.content)


async def test_query_string_is_never_logged() -> None:
    sink = Captured()
    async with client_for(wrap(make_app(), sink)) as client:
        await client.get("/items/1?token=tok-SECRET-1&password=pw-SECRET-2")
        await client.get("/nowhere?api_key=key-SECRET-3")
    assert len(sink.raw) == 2
    everything = b"".join(sink.raw)
    for needle in (b"SECRET", b"token", b"password", b"api_key", b"?"):
        assert needle not in everything


async def test_generated_request_id_when_absent() -> None:
    sink = Captured()
    async with client_for(wrap(make_app(), sink)) as client:
        first = await client.get("/items/1")
        second = await client.get("/items/1")
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(HEX32.fullmatch(i) for i in ids)
    assert ids[0] != ids[1]
    assert [line["request.id"] for line in sink.lines] == ids
    assert first.json()["request_id"] == ids[0]


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"a b",
        b"x" * 129,
        b"y" * 200,
        b"abc\ndef",
        b"abc\r\nSet-Cookie: x=1",
        b'{"level":"ERROR"}',
        "caf\u00e9".encode(),
        b"id;drop",
    ],
)
async def test_malformed_request_id_is_replaced(value: bytes) -> None:
    # Raw ASGI, because an HTTP client refuses to send some of these values at all.
    sink = Captured()
    messages: list[Message] = []
    app = wrap(make_app(), sink)
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/items/5",
        "raw_path": b"/items/5",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"x-request-id", value)],
        "client": ("198.51.100.9", 5000),
        "server": ("testserver", 80),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = messages[0]
    assert start["status"] == 200
    echoed = [v for k, v in start["headers"] if k == b"x-request-id"]
    assert len(echoed) == 1
    assert HEX32.fullmatch(echoed[0].decode())
    assert echoed[0] != value
    assert scope["state"]["request_id"] == echoed[0].decode()
    assert sink.only()["request.id"] == echoed[0].decode()
    assert value not in b"".join(sink.raw) or value == b""


@pytest.mark.parametrize(
    "value", ["a", "x" * 128, "A-Za-z0-9._:-", "6f1c2a4e-0a4b-4c7e-9d8e-7c1a2b3c4d5e", "trace:1.2"]
)
async def test_well_formed_request_id_is_kept(value: str) -> None:
    sink = Captured()
    async with client_for(wrap(make_app(), sink)) as client:
        response = await client.get("/items/1", headers={"X-Request-ID": value})
    assert response.headers.get_list("x-request-id") == [value]
    assert response.json()["request_id"] == value
    assert sink.only()["request.id"] == value


def test_request_id_validation_and_generation() -> None:
    assert is_valid_request_id(b"abc")
    assert not is_valid_request_id(b"a/b")
    assert not is_valid_request_id(b"x" * 129)
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(HEX32.fullmatch(i) for i in ids)


async def test_account_id_when_authenticated() -> None:
    sink = Captured()
    async with client_for(wrap(make_app(), sink)) as client:
        await client.get("/me")
        await client.get("/items/3")
    with_account, without = sink.lines
    assert with_account["account.id"] == 7
    assert with_account["http.route"] == "/me"
    assert "account.id" not in without


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("203.0.113.7", "203.0.113.0"),
        ("10.1.2.255", "10.1.2.0"),
        ("2001:db8:abcd:12:3456::1", "2001:db8:abcd::"),
        ("2001:db8:abcd:ffff:ffff:ffff:ffff:ffff", "2001:db8:abcd::"),
        ("::1", "::"),
        ("::ffff:198.51.100.23", "198.51.100.0"),
        ("testclient", "testclient"),
    ],
)
def test_anonymize_ip(address: str, expected: str) -> None:
    assert anonymize_ip(address) == expected


@pytest.mark.parametrize(
    ("anonymize", "client", "expected"),
    [
        (True, "203.0.113.7", "203.0.113.0"),
        (True, "2001:db8:abcd:12::1", "2001:db8:abcd::"),
        (False, "203.0.113.7", "203.0.113.7"),
        (False, "2001:db8:abcd:12::1", "2001:db8:abcd:12::1"),
    ],
)
async def test_client_address_anonymized_when_enabled(
    anonymize: bool, client: str, expected: str
) -> None:
    sink = Captured()
    async with client_for(wrap(make_app(), sink, anonymize=anonymize), (client, 1)) as http:
        await http.get("/items/1")
    assert sink.only()["client.address"] == expected


def test_from_settings_anonymizes_in_production_only() -> None:
    dev = Settings(_env_file=None, env="development")
    prod = Settings(_env_file=None, env="production")
    forced = Settings(_env_file=None, env="development", log_anonymize_ip=True)
    off = Settings(_env_file=None, env="development", access_log=False)
    app = make_app()
    assert RequestLogMiddleware.from_settings(app, dev).anonymize is False
    assert RequestLogMiddleware.from_settings(app, prod).anonymize is True
    assert RequestLogMiddleware.from_settings(app, forced).anonymize is True
    assert RequestLogMiddleware.from_settings(app, off).access_log is False


def test_wired_into_slot_2_of_the_policy_stack() -> None:
    prod = Settings(_env_file=None, env="production")
    stack = policy_middleware(prod)
    classes: list[Any] = [m.cls for m in stack]
    assert RequestLogMiddleware in classes
    # Outside the error layer, so a 500 produced there is logged with its status.
    assert classes.index(RequestLogMiddleware) < classes.index(ErrorMiddleware)
    entry = stack[classes.index(RequestLogMiddleware)]
    assert entry.kwargs == {"access_log": True, "anonymize": True}


async def test_5xx_is_logged_at_error_and_problem_carries_the_request_id() -> None:
    sink = Captured()
    async with client_for(wrap(make_app(), sink)) as client:
        boom = await client.get("/boom", headers={"X-Request-ID": "boom-1"})
        unavailable = await client.get("/unavailable")
        missing = await client.get("/missing")
    assert boom.status_code == 500
    assert boom.headers["x-request-id"] == "boom-1"
    assert boom.json()["request_id"] == "boom-1"
    assert unavailable.status_code == 503
    assert missing.status_code == 404
    levels = [(line["http.response.status_code"], line["level"]) for line in sink.lines]
    assert levels == [(500, "ERROR"), (503, "ERROR"), (404, "INFO")]
    assert sink.lines[0]["http.route"] == "/boom"
    assert b"kaboom" not in b"".join(sink.raw)


async def test_exception_escaping_the_stack_is_logged_as_500() -> None:
    sink = Captured()
    app = wrap(make_app(), sink, errors=False)
    async with client_for(app) as client:
        with pytest.raises(RuntimeError, match="kaboom"):
            await client.get("/boom")
    line = sink.only()
    assert line["http.response.status_code"] == 500
    assert line["level"] == "ERROR"
    assert line["http.response.body.size"] == 0  # nothing answered before the exception


async def test_request_without_response_is_logged_as_499() -> None:
    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    sink = Captured()
    async with client_for(RequestLogMiddleware(silent, sink=sink)) as client:
        with pytest.raises(Exception):  # noqa: B017, PT011 - the transport complains in its own way
            await client.get("/gone")
    assert sink.only()["http.response.status_code"] == 499


async def test_cancelled_request_is_logged_as_499_not_500() -> None:
    async def hangs(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(30)

    sink = Captured()
    middleware = RequestLogMiddleware(hangs, sink=sink)
    scope: Scope = {"type": "http", "method": "GET", "path": "/slow", "headers": []}

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    task = asyncio.ensure_future(middleware(scope, receive, send))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    line = sink.only()
    assert line["http.response.status_code"] == 499
    assert line["level"] == "INFO"


async def test_body_size_counts_every_chunk_and_head_is_zero() -> None:
    sink = Captured()
    async with client_for(wrap(make_app(), sink)) as client:
        streamed = await client.get("/stream")
        await client.head("/nowhere")
    assert streamed.content == b"abcdefgh"
    first, second = sink.lines
    assert first["http.response.body.size"] == 8
    assert second["http.request.method"] == "HEAD"
    assert second["http.response.body.size"] == 0


async def test_duration_is_measured_in_milliseconds() -> None:
    sink = Captured()
    async with client_for(wrap(make_app(), sink)) as client:
        await client.get("/slow")
    duration = sink.only()["duration_ms"]
    assert 20 <= duration < 2000


async def test_access_log_off_still_echoes_the_request_id() -> None:
    sink = Captured()
    async with client_for(wrap(make_app(), sink, access_log=False)) as client:
        response = await client.get("/items/1", headers={"X-Request-ID": "keep-me"})
        generated = await client.get("/items/1")
    assert response.headers["x-request-id"] == "keep-me"
    assert HEX32.fullmatch(generated.headers["x-request-id"])
    assert sink.raw == []


async def test_non_http_scopes_pass_through_untouched() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    sink = Captured()
    middleware = RequestLogMiddleware(app, sink=sink)
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        return None

    await middleware(scope, receive, send)
    assert seen == [{"type": "lifespan", "asgi": {"version": "3.0"}}]
    assert sink.raw == []


async def test_lifespan_shutdown_flushes_the_access_log() -> None:
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> Message:
        return next(incoming)

    async def send(message: Message) -> None:
        events.append(message["type"])

    middleware = RequestLogMiddleware(
        app, sink=lambda line: None, flush=lambda: events.append("flush")
    )
    await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert events == ["lifespan.startup.complete", "flush", "lifespan.shutdown.complete"]


def test_default_sink_and_flush_are_the_shared_writer() -> None:
    default = RequestLogMiddleware(make_app())
    assert default.sink == ACCESS_LOG.write
    assert default.flush == ACCESS_LOG.flush
    custom = RequestLogMiddleware(make_app(), sink=lambda line: None)
    assert custom.flush is None


def test_utc_timestamp_format() -> None:
    assert utc_timestamp(0.5) == "1970-01-01T00:00:00.500Z"
    assert utc_timestamp(1_700_000_000.0071) == "2023-11-14T22:13:20.007Z"
    assert utc_timestamp(1_700_000_001.999) == "2023-11-14T22:13:21.999Z"
    assert utc_timestamp(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"


# --- the buffered writer ---------------------------------------------------------------------


class Recorder(io.RawIOBase):
    """A raw stream that records each write call (one write(2) per call on a real fd)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.calls.append(bytes(data))
        return len(data)


async def test_writer_batches_until_the_timer_fires() -> None:
    stream = Recorder()
    writer = AccessLogWriter(stream, flush_interval=0.05)
    writer.write(b'{"a":1}\n')
    writer.write(b'{"a":2}\n')
    assert stream.calls == []
    for _ in range(100):
        if stream.calls:
            break
        await asyncio.sleep(0.01)
    assert stream.calls == [b'{"a":1}\n{"a":2}\n']
    # The timer is only armed while lines wait: a new line arms it again.
    writer.write(b'{"a":3}\n')
    writer.flush()
    assert stream.calls[-1] == b'{"a":3}\n'


async def test_writer_flushes_at_once_when_the_buffer_is_full() -> None:
    stream = Recorder()
    writer = AccessLogWriter(stream, flush_interval=60, max_buffer=20)
    writer.write(b"0123456789\n")
    assert stream.calls == []
    writer.write(b"0123456789\n")
    assert b"".join(stream.calls) == b"0123456789\n0123456789\n"
    writer.flush()  # also cancels nothing, writes nothing
    assert b"".join(stream.calls) == b"0123456789\n0123456789\n"


def test_writer_without_event_loop_writes_immediately() -> None:
    stream = Recorder()
    writer = AccessLogWriter(stream)
    writer.write(b"x\n")
    assert stream.calls == [b"x\n"]


def test_writer_writes_whole_lines_in_pipe_sized_chunks() -> None:
    stream = Recorder()
    writer = AccessLogWriter(stream, flush_interval=60, max_buffer=1 << 20)
    lines = [orjson.dumps({"n": n, "pad": "p" * (n % 300)}) + b"\n" for n in range(400)]

    async def fill() -> None:
        for line in lines:
            writer.write(line)

    asyncio.run(fill())  # the loop closes with the timer still pending: nothing written yet
    assert stream.calls == []
    writer.flush()
    assert b"".join(stream.calls) == b"".join(lines)
    assert len(stream.calls) > 1
    for chunk in stream.calls:
        assert len(chunk) <= 4096
        assert chunk.endswith(b"\n")
    # A timer left on a closed loop does not stop the next loop from arming its own.
    follow_up = Recorder()
    writer2 = AccessLogWriter(follow_up, flush_interval=0.01)

    async def twice() -> None:
        writer2.write(b"a\n")

    asyncio.run(twice())

    async def again() -> None:
        writer2.write(b"b\n")
        await asyncio.sleep(0.05)

    asyncio.run(again())
    assert b"".join(follow_up.calls) == b"a\nb\n"


def test_writer_survives_a_broken_stream() -> None:
    class Broken(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            raise BrokenPipeError

    writer = AccessLogWriter(Broken())
    writer.write(b"lost\n")  # no exception: a dead stdout must not fail requests


def test_default_writer_targets_the_current_sys_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    writer = AccessLogWriter()
    print("before", end="")  # an unfinished text line is flushed ahead of ours
    writer.write(b'{"n":1}\n')
    assert capsys.readouterr().out == 'before{"n":1}\n'
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        writer.write(b'{"n":2}\n')
    assert text.getvalue() == '{"n":2}\n'


async def test_end_to_end_through_the_writer() -> None:
    stream = io.BytesIO()
    writer = AccessLogWriter(stream, flush_interval=60)
    sink: Callable[[bytes], None] = writer.write
    async with client_for(RequestLogMiddleware(make_app(), sink=sink)) as client:
        await client.get("/items/1")
        await client.get("/items/2")
    assert stream.getvalue() == b""
    writer.flush()
    lines = stream.getvalue().splitlines()
    assert [orjson.loads(line)["url.path"] for line in lines] == ["/items/1", "/items/2"]
