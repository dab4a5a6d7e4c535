"""Request ids and one structured access-log line per request.

`RequestLogMiddleware` takes the client's `X-Request-ID` when it is well-formed (1 to 128 of
`A-Z a-z 0-9 . _ : -`), otherwise generates one (32 hex digits), stores it in
`scope["state"]["request_id"]` and echoes it as `X-Request-ID` on the response. When the access
log is on it writes one JSON line per request with OpenTelemetry HTTP field names:

    {"timestamp":"2025-01-02T03:04:05.678Z","level":"INFO","logger":"stalwart.access",
     "request.id":"...","client.address":"203.0.113.0","http.request.method":"GET",
     "http.route":"/notes/{note_id}","url.path":"/notes/42","http.response.status_code":200,
     "duration_ms":1.234,"http.response.body.size":57,"user_agent.original":"curl/8.5.0",
     "account.id":7}

Level: INFO below 500, ERROR for 5xx. Client errors (4xx) stay INFO: they are the client's
problem and scanners produce them by the thousand, so WARNING would bury real warnings. A
request that ends without any response (client gone, task cancelled) is logged with status 499,
the nginx convention; one that raises before responding is logged as 500. `http.route`,
`client.address`, `user_agent.original` and `account.id` are left out when unknown. The query
string is never logged, and no header except the user agent, so the line needs no redaction.

The line is orjson bytes appended to `AccessLogWriter`, which batches lines in memory and
writes them to stdout at most every `flush_interval` seconds (a `loop.call_later` timer, armed
only while lines are waiting, so no task is ever left running) or as soon as `max_buffer`
bytes are waiting, and at interpreter exit. Each flush writes chunks of at most `PIPE_BUF`
bytes cut at line ends, one write(2) each, so with several workers sharing one pipe lines never
interleave. The middleware flushes it when the ASGI lifespan shuts down (uvicorn workers end
with os._exit, which skips atexit); `ACCESS_LOG.flush()` can be called at any other time.
"""

from __future__ import annotations

import asyncio
import atexit
import re
import sys
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address
from random import getrandbits
from typing import Any, Protocol

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.policies.exchange import watch
from stalwart.policies.timestamps import utc_timestamp
from stalwart.settings import Settings

__all__ = [
    "ACCESS_LOG",
    "AccessLogWriter",
    "LineSink",
    "RequestLogMiddleware",
    "anonymize_ip",
    "is_valid_request_id",
    "new_request_id",
]

LineSink = Callable[[bytes], None]
"""Receives one complete access-log line (JSON bytes ending in a newline)."""

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")
_MAX_USER_AGENT = 512
# POSIX guarantees writes up to PIPE_BUF bytes to a pipe are not interleaved with other writers.
_PIPE_BUF = 4096
_OPTIONS = orjson.OPT_APPEND_NEWLINE
# Module-level aliases: one global lookup on the hot path instead of a global plus an attribute.
_is_valid_id = _VALID_REQUEST_ID.fullmatch
_perf_counter = time.perf_counter
_time = time.time
_dumps = orjson.dumps


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


def is_valid_request_id(value: bytes) -> bool:
    return _VALID_REQUEST_ID.fullmatch(value) is not None


def new_request_id() -> str:
    # 128 random bits. Not secret, only unique: the random module is several times cheaper than
    # os.urandom or uuid4 and reseeds itself in forked workers. bytes.hex() is the same 32
    # lower-case digits as f"{n:032x}" at less than half the cost.
    return getrandbits(128).to_bytes(16, "big").hex()


@lru_cache(maxsize=8192)
def anonymize_ip(host: str) -> str:
    """IPv4 with the last octet zeroed, IPv6 truncated to its /48; anything else unchanged."""
    try:
        address = ip_address(host)
    except ValueError:
        return host
    if isinstance(address, IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is None:
            return str(IPv6Address(int(address) >> 80 << 80))
        address = mapped
    return str(IPv4Address(int(address) & 0xFFFFFF00))


class AccessLogWriter:
    """Batches lines in memory and writes them to a binary stream (stdout by default)."""

    def __init__(
        self,
        stream: _Writable | None = None,
        *,
        flush_interval: float = 0.5,
        max_buffer: int = 65_536,
    ) -> None:
        self._stream = stream
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def write(self, line: bytes) -> None:
        with self._lock:
            self._buffer += line
            size = len(self._buffer)
            timer_loop = self._timer_loop
        if size >= self.max_buffer:
            self.flush()
        elif self._timer is None or (timer_loop is not None and timer_loop.is_closed()):
            self._arm()

    def _arm(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # No event loop to flush later: write now.
            self.flush()
            return
        self._timer_loop = loop
        self._timer = loop.call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        """Write every waiting line now (safe to call at any time, from any thread)."""
        with self._lock:
            timer, self._timer, self._timer_loop = self._timer, None, None
            data = bytes(self._buffer)
            self._buffer.clear()
        if timer is not None:
            timer.cancel()
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            stream = self._stream if self._stream is not None else _stdout()
            flush = getattr(stream, "flush", None)
            start = 0
            while start < len(data):
                end = start + _PIPE_BUF
                if end < len(data):
                    cut = data.rfind(b"\n", start, end)
                    end = cut + 1 if cut >= start else (data.find(b"\n", end) + 1 or len(data))
                _write_all(stream, data[start:end])
                # On a buffered stream, one flush per chunk keeps each chunk one write(2).
                if flush is not None:
                    flush()
                start = end
        except (OSError, ValueError, AttributeError):
            # stdout closed, missing or a broken pipe: losing log lines must not fail requests.
            pass


def _write_all(stream: _Writable, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        written = stream.write(view)  # type: ignore[arg-type]
        if not written:
            return
        view = view[written:]


class _TextStream:
    """Adapter for a text-only sys.stdout (an io.StringIO under redirect_stdout)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, data: bytes, /) -> int:
        self.stream.write(bytes(data).decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        self.stream.flush()


def _stdout() -> _Writable:
    # Looked up at every flush, not cached: whoever replaced sys.stdout (a test's capture, a
    # supervisor) gets the lines, and a closed descriptor is never written to by number.
    stdout = sys.stdout
    stdout.flush()  # text printed before our lines stays before them
    buffer = getattr(stdout, "buffer", None)
    return buffer if buffer is not None else _TextStream(stdout)


ACCESS_LOG = AccessLogWriter()
atexit.register(ACCESS_LOG.flush)


class RequestLogMiddleware:
    """Request id in, request id out, and one JSON access-log line per HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        access_log: bool = True,
        anonymize: bool = False,
        sink: LineSink | None = None,
        flush: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.anonymize = anonymize
        self.sink: LineSink = sink if sink is not None else ACCESS_LOG.write
        # Called when the lifespan shuts down, so the last lines are out before the process
        # ends (workers exit with os._exit, which skips atexit).
        self.flush = flush if flush is not None else (ACCESS_LOG.flush if sink is None else None)

    @classmethod
    def from_settings(
        cls, app: ASGIApp, settings: Settings, sink: LineSink | None = None
    ) -> RequestLogMiddleware:
        return cls(
            app,
            access_log=settings.access_log,
            anonymize=settings.effective_anonymize_ip,
            sink=sink,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan" and self.flush is not None:
                await self.app(scope, receive, self._flushing_send(send))
            else:
                await self.app(scope, receive, send)
            return
        started = _perf_counter()
        raw_id: bytes | None = None
        user_agent: bytes | None = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                raw_id = value
            elif name == b"user-agent":
                user_agent = value
        if raw_id is not None and _is_valid_id(raw_id) is not None:
            request_id = raw_id.decode("ascii")
        else:
            request_id = new_request_id()
            raw_id = request_id.encode("ascii")
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        exchange, send = watch(scope, send)
        exchange.headers.append((REQUEST_ID_HEADER, raw_id))
        if not self.access_log:
            await self.app(scope, receive, send)
            return

        failed = False
        try:
            await self.app(scope, receive, send)
        except Exception:
            failed = True  # logged as 500 unless a response had started
            raise
        finally:
            # Inline rather than a method: a call with this many arguments is a measurable
            # share of the middleware's cost.
            # Microseconds truncated, as milliseconds; round(x, 3) costs more than the whole dict.
            duration_ms = int((_perf_counter() - started) * 1_000_000) / 1000
            # Cancellation (the client went away) leaves status 0, logged as 499.
            status = exchange.status or (500 if failed else 499)
            client = scope.get("client")
            method = scope["method"]
            template = getattr(scope.get("route"), "path", None)
            # One dict display in the final key order, then the rare absent fields deleted:
            # cheaper than inserting the keys one by one; orjson keeps the insertion order.
            line: dict[str, Any] = {
                "timestamp": utc_timestamp(_time()),
                "level": "ERROR" if status >= 500 else "INFO",
                "logger": "stalwart.access",
                "request.id": request_id,
                "client.address": (anonymize_ip(client[0]) if self.anonymize else client[0])
                if client
                else None,
                "http.request.method": method,
                "http.route": template,
                "url.path": scope["path"],
                "http.response.status_code": status,
                "duration_ms": duration_ms,
                # The server drops a HEAD response's body, whatever the app sent.
                "http.response.body.size": exchange.body_size if method != "HEAD" else 0,
            }
            if not client:
                del line["client.address"]
            if template is None:
                del line["http.route"]
            if user_agent is not None:
                line["user_agent.original"] = user_agent[:_MAX_USER_AGENT].decode("latin-1")
            account_id = state.get("account_id")
            if account_id is not None:
                line["account.id"] = account_id
            self.sink(_dumps(line, option=_OPTIONS, default=str))

    def _flushing_send(self, send: Send) -> Send:
        flush = self.flush
        assert flush is not None

        async def send_after_flush(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                flush()
            await send(message)

        return send_after_flush
