"""Response compression: brotli, zstd or gzip, negotiated from `Accept-Encoding`.

Modelled on Starlette's `middleware/gzip.py` responder, with what it lacks for production:

* Negotiation honours q-values (`q=0` refuses a coding, `*` covers the unlisted ones); on a
  tie the preference is br > zstd > gzip. The answer per distinct header value is cached,
  so the hot path does no parsing.
* `Vary: Accept-Encoding` goes on every response whose coding depended on the request,
  including the ones sent uncompressed to a client that accepts nothing: without it a
  shared cache could hand a gzip body to a client that cannot read it.
* Never compressed: bodies under `minimum_size`, already-compressed media types, responses
  that carry `Content-Encoding` already (precompressed static files), `Cache-Control:
  no-transform`, partial content (206 / `Content-Range`), and bodiless statuses.
* Streaming-safe: each `more_body` chunk is compressed and flushed at once, so a streamed
  response keeps streaming; `Content-Length` is dropped. Chunks of 128 KiB or more are
  compressed in a worker thread so the event loop keeps serving.
* HEAD answers with the headers the GET would carry (`Content-Encoding`, `Vary`) and no
  `Content-Length`, which RFC 9110 allows for a HEAD response.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import anyio.lowlevel
import anyio.to_thread
import brotli
import zstandard
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.policies.exchange import Exchange, RawHeaders, watch
from stalwart.settings import Settings

__all__ = [
    "DEFAULT_CODINGS",
    "EXCLUDED_CONTENT_TYPES",
    "CompressionMiddleware",
    "is_compressible_type",
    "negotiate_encoding",
    "parse_accept_encoding",
]

# Preference order when q-values tie.
DEFAULT_CODINGS: tuple[str, ...] = ("br", "zstd", "gzip")
_ALIASES = {"x-gzip": "gzip"}

# Media types whose bodies are already compressed (or must not be buffered: event streams).
# `type/*` entries cover a whole top-level type; `_COMPRESSIBLE_IMAGES` are the exceptions.
EXCLUDED_CONTENT_TYPES: frozenset[str] = frozenset(
    {
        "image/*",
        "video/*",
        "audio/*",
        "font/woff",
        "font/woff2",
        "application/font-woff",
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/zstd",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-7z-compressed",
        "application/x-rar-compressed",
        "application/vnd.rar",
        "application/pdf",
        "application/grpc",
        "text/event-stream",
    }
)
_COMPRESSIBLE_IMAGES = frozenset(
    {"image/svg+xml", "image/bmp", "image/x-icon", "image/vnd.microsoft.icon"}
)

_NO_BODY_STATUSES = frozenset({204, 205, 304})
_THREAD_MINIMUM_SIZE = 128 * 1024


def parse_accept_encoding(value: str) -> dict[str, float]:
    """`{coding: q}` for every coding named in an `Accept-Encoding` value (lower-cased)."""
    result: dict[str, float] = {}
    for item in value.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params.split(";"):
            name, sep, raw = param.partition("=")
            if name.strip().lower() == "q" and sep:
                try:
                    q = float(raw.strip())
                except ValueError:
                    q = 0.0  # an unreadable weight: safest to read it as a refusal
                if not 0.0 <= q <= 1.0:  # also rejects nan and inf
                    q = 0.0
                break
        coding = _ALIASES.get(coding, coding)
        # A coding listed twice keeps its highest weight.
        result[coding] = max(q, result.get(coding, 0.0))
    return result


@functools.lru_cache(maxsize=512)
def negotiate_encoding(
    accept_encoding: str, available: tuple[str, ...] = DEFAULT_CODINGS
) -> str | None:
    """The best coding in `available` for an `Accept-Encoding` value, or None for identity.

    `available` is in preference order: on equal weights the earlier coding wins.
    """
    if not accept_encoding:
        return None
    weights = parse_accept_encoding(accept_encoding)
    star = weights.get("*", 0.0)
    best: str | None = None
    best_q = 0.0
    for coding in available:
        q = weights.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    return best


def is_compressible_type(content_type: bytes | str, excluded: frozenset[str]) -> bool:
    """False for missing, already-compressed or streaming-only media types."""
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    media = content_type.partition(";")[0].strip().lower()
    if not media:
        return False
    if media in excluded:
        return False
    major = media.partition("/")[0]
    if f"{major}/*" in excluded and media not in _COMPRESSIBLE_IMAGES:
        return False
    # application/grpc+proto and friends
    return media.partition("+")[0] not in excluded


class _Encoder(Protocol):
    def chunk(self, data: bytes) -> bytes: ...

    def finish(self, data: bytes) -> bytes: ...


class _GzipEncoder:
    def __init__(self, level: int) -> None:
        # wbits 31: a gzip container (header with mtime 0) around raw deflate.
        self._c = zlib.compressobj(level, zlib.DEFLATED, 31)

    def chunk(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)

    def finish(self, data: bytes) -> bytes:
        return self._c.compress(data) + self._c.flush(zlib.Z_FINISH)


class _BrotliEncoder:
    def __init__(self, quality: int) -> None:
        self._c = brotli.Compressor(quality=quality)

    def chunk(self, data: bytes) -> bytes:
        out: bytes = self._c.process(data) + self._c.flush()
        return out

    def finish(self, data: bytes) -> bytes:
        out: bytes = self._c.process(data) + self._c.finish()
        return out


class _ZstdEncoder:
    def __init__(self, compressor: zstandard.ZstdCompressor) -> None:
        self._compressor = compressor
        self._c: zstandard.ZstdCompressionObj | None = None

    def chunk(self, data: bytes) -> bytes:
        if self._c is None:
            self._c = self._compressor.compressobj()
        out: bytes = self._c.compress(data) + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return out

    def finish(self, data: bytes) -> bytes:
        if self._c is None:
            # Whole body at once: the frame header then records the content size.
            out: bytes = self._compressor.compress(data)
            return out
        out = self._c.compress(data) + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
        return out


def _header_tokens(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [
        token.strip().lower()
        for key, value in headers
        if key.lower() == name
        for token in value.split(b",")
    ]


_ACCEPT_ENCODING = b"Accept-Encoding"
# Verdicts of `CompressionMiddleware._inspect` on a response start.
_NOT_CANDIDATE = 0  # coding never depends on the request: leave the response alone
_CANDIDATE = 1  # coding depends on the request
# Bounds on the per-instance memo dicts: cleared when full, so hostile header values
# cannot grow them without limit.
_MEMO_SIZE = 512


def _without(headers: list[tuple[bytes, bytes]], name: bytes) -> list[tuple[bytes, bytes]]:
    return [(key, value) for key, value in headers if key.lower() != name]


def _weaken_etag(headers: list[tuple[bytes, bytes]]) -> None:
    """A strong ETag promises byte-identical content; a compressed body breaks that promise.

    Only done for range-capable responses (`Accept-Ranges: bytes`, i.e. static files), where
    a client may combine byte ranges under a strong validator. API ETags are the resource
    version and are kept as they are so `If-Match` keeps matching after a compressed GET.
    """
    if b"bytes" not in _header_tokens(headers, b"accept-ranges"):
        return
    for index, (key, value) in enumerate(headers):
        if key.lower() == b"etag" and value.startswith(b'"'):
            headers[index] = (key, b"W/" + value)


class CompressionMiddleware:
    """Pure ASGI: compress HTTP responses with the best coding the client accepts."""

    def __init__(
        self,
        app: ASGIApp,
        minimum_size: int = 500,
        *,
        codings: Iterable[str] = DEFAULT_CODINGS,
        gzip_level: int = 6,
        brotli_quality: int = 4,
        zstd_level: int = 3,
        excluded_content_types: Iterable[str] = EXCLUDED_CONTENT_TYPES,
    ) -> None:
        self.app = app
        self.minimum_size = minimum_size
        self.excluded = frozenset(t.lower() for t in excluded_content_types)
        zstd_compressor = zstandard.ZstdCompressor(level=zstd_level)
        factories: dict[str, Callable[[], _Encoder]] = {
            "br": lambda: _BrotliEncoder(brotli_quality),
            "zstd": lambda: _ZstdEncoder(zstd_compressor),
            "gzip": lambda: _GzipEncoder(gzip_level),
        }
        self.codings = tuple(c for c in codings if c in factories)
        self._factories = factories
        self._encoding_values = {c: c.encode() for c in self.codings}
        # Raw `Accept-Encoding` value -> negotiated coding, and raw `Content-Type` value ->
        # compressible: a handful of distinct values in practice, so the hot path is one
        # dict lookup instead of decoding and parsing.
        self._negotiated: dict[bytes, str | None] = {}
        self._compressible: dict[bytes, bool] = {}

    @classmethod
    def from_settings(cls, app: ASGIApp, settings: Settings) -> CompressionMiddleware:
        return cls(app, minimum_size=settings.compression_min_size)

    def _coding_for(self, scope: Scope) -> str | None:
        value: bytes | None = None
        for key, item in scope["headers"]:
            if key == b"accept-encoding":
                value = item if value is None else value + b"," + item
        if value is None:
            return None
        try:
            return self._negotiated[value]
        except KeyError:
            pass
        coding = negotiate_encoding(value.decode("latin-1"), self.codings)
        if len(self._negotiated) >= _MEMO_SIZE:
            self._negotiated.clear()
        self._negotiated[value] = coding
        return coding

    def _is_compressible(self, content_type: bytes) -> bool:
        """`is_compressible_type`, remembered per raw value (the caller looks it up first)."""
        result = is_compressible_type(content_type, self.excluded)
        if len(self._compressible) >= _MEMO_SIZE:
            self._compressible.clear()
        self._compressible[content_type] = result
        return result

    def _inspect(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> int:
        """Whether a response's coding can depend on the request."""
        if status < 200 or status in _NO_BODY_STATUSES or status == 206:
            return _NOT_CANDIDATE
        content_type = b""
        for key, value in headers:
            name = key.lower()
            if name == b"content-type":
                content_type = value
            elif name == b"content-encoding":
                if value.strip().lower() != b"identity":
                    return _NOT_CANDIDATE
            elif name == b"content-range" or (
                name == b"cache-control" and b"no-transform" in value.lower()
            ):
                return _NOT_CANDIDATE
        compressible = self._compressible.get(content_type)
        if compressible is None:
            compressible = self._is_compressible(content_type)
        return _CANDIDATE if compressible else _NOT_CANDIDATE

    def _candidate_headers(
        self, message: Message, exchange: Exchange
    ) -> list[tuple[bytes, bytes]] | None:
        """A copy of the start's headers when its coding depends on the request, else None.

        A candidate gets `Vary: Accept-Encoding` (through the exchange, which merges it with
        the other layers' Vary tokens). Always a new list: the app may reuse the one it sent.
        """
        headers: Iterable[tuple[bytes, bytes]] = message.get("headers", ())
        if not isinstance(headers, list | tuple):
            headers = list(headers)  # read twice below: a one-shot iterable would run dry
        if self._inspect(message["status"], headers) == _NOT_CANDIDATE:
            return None
        exchange.vary.append(_ACCEPT_ENCODING)
        return list(headers)

    def _vary_hook(self, exchange: Exchange, headers: RawHeaders) -> None:
        if self._inspect(exchange.status, headers) != _NOT_CANDIDATE:
            exchange.vary.append(_ACCEPT_ENCODING)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the inner app's awaitable: one coroutine frame less per
        # request than `async def` (see policies/exchange.py on the per-layer costs).
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        exchange, send = watch(scope, send)
        coding = self._coding_for(scope)
        if coding is not None:
            responder = _Responder(self, send, exchange, coding, is_head=scope["method"] == "HEAD")
            return self.app(scope, receive, responder.send)
        # Nothing to compress: the only job is `Vary` on the start, a hook on the exchange.
        exchange.hooks.append(self._vary_hook)
        return self.app(scope, receive, send)


class _Responder:
    """Per-request state: holds `http.response.start` until the body says what to do."""

    __slots__ = ("coding", "encoder", "exchange", "is_head", "mw", "pending", "state", "upstream")

    # states
    PASS = 0  # forward everything unchanged
    DECIDE = 1  # start held back until the first body chunk
    STREAM = 2  # compressing

    def __init__(
        self,
        mw: CompressionMiddleware,
        send: Send,
        exchange: Exchange,
        coding: str | None,
        *,
        is_head: bool,
    ) -> None:
        self.mw = mw
        self.upstream = send
        self.exchange = exchange
        self.coding = coding
        self.is_head = is_head
        self.pending: Message | None = None
        self.encoder: _Encoder | None = None
        self.state = self.PASS

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif kind == "http.response.body" and self.state == self.DECIDE:
            await self._first_body(message)
        elif kind == "http.response.body" and self.state == self.STREAM:
            body = message.get("body", b"")
            more = message.get("more_body", False)
            message["body"] = await self._compress(body, final=not more)
            await self.upstream(message)
        else:
            if self.pending is not None:
                # e.g. a pathsend body: send it as it is.
                await self.upstream(self.pending)
                self.pending = None
                self.state = self.PASS
            await self.upstream(message)

    async def _start(self, message: Message) -> None:
        headers = self.mw._candidate_headers(message, self.exchange)
        if headers is None:
            await self.upstream(message)
            return
        message["headers"] = headers
        if self.coding is None or self._declared_small(headers):
            await self.upstream(message)
            return
        if self.is_head:
            headers = _without(headers, b"content-length")
            headers.append((b"content-encoding", self.mw._encoding_values[self.coding]))
            _weaken_etag(headers)
            message["headers"] = headers
            await self.upstream(message)
            return
        self.pending = message
        self.state = self.DECIDE

    def _declared_small(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for key, value in headers:
            if key.lower() == b"content-length":
                try:
                    return int(value) < self.mw.minimum_size
                except ValueError:
                    return False
        return False

    async def _first_body(self, message: Message) -> None:
        start = self.pending
        assert start is not None
        assert self.coding is not None
        self.pending = None
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        headers: list[tuple[bytes, bytes]] = start["headers"]
        if not more and len(body) < self.mw.minimum_size:
            self.state = self.PASS
            await self.upstream(start)
            await self.upstream(message)
            return
        self.encoder = self.mw._factories[self.coding]()
        self.state = self.STREAM
        compressed = await self._compress(body, final=not more)
        headers = _without(headers, b"content-length")
        if not more and not start.get("trailers", False):
            headers.append((b"content-length", str(len(compressed)).encode()))
        headers.append((b"content-encoding", self.mw._encoding_values[self.coding]))
        _weaken_etag(headers)
        start["headers"] = headers
        message["body"] = compressed
        await self.upstream(start)
        await self.upstream(message)

    async def _compress(self, body: bytes, *, final: bool) -> bytes:
        encoder = self.encoder
        assert encoder is not None
        fn = encoder.finish if final else encoder.chunk
        if len(body) >= _THREAD_MINIMUM_SIZE:
            return await anyio.to_thread.run_sync(fn, body, limiter=_limiter())
        return fn(body)


_capacity: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar(
    "stalwart_compression_limiter"
)


def _limiter() -> anyio.CapacityLimiter:
    # Its own limiter, so big compressions cannot starve the threads that sync routes use.
    try:
        return _capacity.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(8)
        _capacity.set(limiter)
        return limiter
