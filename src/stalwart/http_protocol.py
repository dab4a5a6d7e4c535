"""uvicorn's httptools protocol, writing a long response head in one pass.

The policy adds 17 fields to every response (security headers, X-Request-ID, RateLimit, Vary).
uvicorn checks a response head field by field, two regular-expression searches and a few
comparisons each; with ~20 fields that was the largest single cost the policy adds to a small
response on the same server (benchmarks/scale.py, the "floor" rows). Here a head of more than
`_FEW_FIELDS` fields is checked with one table-driven scan of all names and one of all values
(the same characters are refused as uvicorn refuses) and joined in C; the fields uvicorn acts
on (Content-Length, Transfer-Encoding, Connection) are found with one set lookup per name.
Shorter heads, a head that fails the check, and everything after the head take uvicorn's own
code unchanged, so the errors it raises and all body handling are uvicorn's.

`tests/test_http_protocol.py` runs every head through both and compares the bytes written
and the cycle's state; uvicorn is pinned by the lock file.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    RequestResponseCycle,
)
from uvicorn.protocols.http.httptools_impl import (
    HttpToolsProtocol as _UvicornProtocol,
)

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

__all__ = ["FastHeadCycle", "HttpToolsProtocol"]

# Up to this many fields uvicorn's loop is as fast (the one-pass check has a fixed cost).
_FEW_FIELDS = 8
# Bytes refused in a field name and in a value: the character classes of uvicorn's
# HEADER_RE and HEADER_VALUE_RE, as deletion tables for bytes.translate.
_BAD_NAME = bytes(c for c in range(256) if HEADER_RE.match(bytes([c])))
_BAD_VALUE = bytes(c for c in range(256) if HEADER_VALUE_RE.match(bytes([c])))
# Joins names and values for the scans: allowed in a name / in a value respectively.
_NAME_GLUE = b"a"
_VALUE_GLUE = b"\t"
_ACTED_ON = frozenset((b"content-length", b"transfer-encoding", b"connection"))
_FIELD = b": ".join


class FastHeadCycle(RequestResponseCycle):
    def send(self, message: ASGISendEvent) -> Coroutine[Any, Any, None]:
        # A plain method handing back a coroutine, as uvicorn's `async def send` does: bodies
        # and short heads get uvicorn's own coroutine with no frame of ours around it.
        if message.get("type") == "http.response.start" and not self.response_started:
            fields = message.get("headers", [])
            if not isinstance(fields, list | tuple) or len(self.default_headers) + len(fields) > _FEW_FIELDS:
                return self._send_long_head(message)
        return super().send(message)

    async def _send_long_head(self, message: ASGISendEvent) -> None:
        # Everything is checked again here, when awaited: the cycle may have changed since.
        if (
            self.response_started
            or message["type"] != "http.response.start"
            or self.disconnected
            or self.flow.write_paused
            or self.access_log
        ):
            await super().send(message)
            return
        app_headers = message.get("headers", [])
        if not isinstance(app_headers, list | tuple):
            # Any iterable is allowed: read it once, for this check and for uvicorn's.
            try:
                app_headers = list(app_headers)
            except TypeError:
                await super().send(message)  # not iterable: uvicorn's error, in its state
                return
            message = {**message, "headers": app_headers}
        headers = self.default_headers + list(app_headers)
        if len(headers) <= _FEW_FIELDS:
            await super().send(message)
            return
        try:
            names = [name.lower() for name, _ in headers]
            values = [value for _, value in headers]
            joined_names = _NAME_GLUE.join(names)
            joined_values = _VALUE_GLUE.join(values)
        except (TypeError, ValueError, AttributeError):
            await super().send(message)  # not pairs of bytes: uvicorn raises its own error
            return
        if len(joined_names.translate(None, _BAD_NAME)) != len(joined_names) or len(
            joined_values.translate(None, _BAD_VALUE)
        ) != len(joined_values):
            await super().send(message)  # uvicorn raises the error for the first bad field
            return

        # From here in uvicorn's order, so a failure leaves the cycle in uvicorn's state.
        self.response_started = True
        self.waiting_for_100_continue = False
        status_code = message["status"]
        content = [STATUS_LINE[status_code]]
        has_connection_close = False
        for index in [i for i, name in enumerate(names) if name in _ACTED_ON]:
            name, value = names[index], values[index]
            # uvicorn's own handling of these three fields, in the same order.
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection":
                connection = [token.lower().strip() for token in value.split(b",")]
                if b"close" in connection:
                    self.keep_alive = False
                    has_connection_close = True
        content += (b"\r\n".join(map(_FIELD, zip(names, values, strict=True))), b"\r\n")
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status_code not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        self.transport.write(b"".join(content))


class HttpToolsProtocol(_UvicornProtocol):
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # uvicorn builds the cycle and schedules its task, which has not run yet: the class
        # is in place before the app's first `send`. An upgrade (WebSocket) makes no cycle.
        if type(cycle) is RequestResponseCycle:
            cycle.__class__ = FastHeadCycle
