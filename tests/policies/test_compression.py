"""Compression middleware: decompress every body and compare bytes."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator

import brotli
import httpx
import pytest
import zstandard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from stalwart.policies.compression import (
    CompressionMiddleware,
    is_compressible_type,
    negotiate_encoding,
    parse_accept_encoding,
)
from stalwart.policies.stack import policy_middleware
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

BODY = b'{"data": [' + b", ".join(b'{"id": %d, "title": "note"}' % i for i in range(200)) + b"]}"
CHUNKS = [b"chunk-%03d " % i * 40 for i in range(10)]


async def json_body(request: Request) -> Response:
    return Response(BODY, media_type="application/json")


async def small(request: Request) -> Response:
    return Response(b'{"ok": true}', media_type="application/json")


async def png(request: Request) -> Response:
    return Response(BODY, media_type="image/png")


async def svg(request: Request) -> Response:
    return Response(BODY, media_type="image/svg+xml")


async def no_transform(request: Request) -> Response:
    return Response(
        BODY, media_type="application/json", headers={"Cache-Control": "no-transform"}
    )


async def encoded(request: Request) -> Response:
    return Response(
        gzip.compress(BODY), media_type="application/json", headers={"Content-Encoding": "gzip"}
    )


async def with_vary(request: Request) -> Response:
    return Response(BODY, media_type="application/json", headers={"Vary": "Origin"})


async def stream(request: Request) -> StreamingResponse:
    async def gen() -> AsyncIterator[bytes]:
        for chunk in CHUNKS:
            yield chunk

    return StreamingResponse(gen(), media_type="text/plain")


async def ranged(request: Request) -> Response:
    return Response(
        BODY,
        media_type="application/json",
        headers={"ETag": '"abc"', "Accept-Ranges": "bytes"},
    )


async def api_etag(request: Request) -> Response:
    return Response(BODY, media_type="application/json", headers={"ETag": '"v7"'})


def build(minimum_size: int = 500) -> Starlette:
    app = Starlette(
        routes=[
            Route("/json", json_body, methods=["GET", "HEAD"]),
            Route("/small", small),
            Route("/png", png),
            Route("/svg", svg),
            Route("/no-transform", no_transform),
            Route("/encoded", encoded),
            Route("/vary", with_vary),
            Route("/stream", stream),
            Route("/ranged", ranged),
            Route("/api-etag", api_etag),
        ]
    )
    app.add_middleware(CompressionMiddleware, minimum_size=minimum_size)
    return app


async def fetch(
    path: str, accept: str | None, method: str = "GET", app: Starlette | None = None
) -> httpx.Response:
    headers = {"Accept-Encoding": accept} if accept is not None else {}
    transport = httpx.ASGITransport(app=app or build())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        if accept is None:
            del client.headers["accept-encoding"]  # httpx sends one by default
        # stream + aread(): httpx would otherwise decode the body for us.
        async with client.stream(method, path, headers=headers) as response:
            response._content = b"".join([chunk async for chunk in response.aiter_raw()])
            return response


def decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        out: bytes = brotli.decompress(data)
        return out
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise AssertionError(coding)


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_each_coding_round_trips_with_exact_headers(coding: str) -> None:
    r = await fetch("/json", coding)
    assert r.status_code == 200
    assert r.headers["content-encoding"] == coding
    assert r.headers["vary"] == "Accept-Encoding"
    assert int(r.headers["content-length"]) == len(r.content) < len(BODY)
    assert decode(coding, r.content) == BODY


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("gzip, deflate, br, zstd", "br"),  # tie: br > zstd > gzip
        ("gzip, zstd", "zstd"),
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("br;q=0.5, gzip;q=0.9", "gzip"),
        ("br;q=0, gzip", "gzip"),
        ("br;q=0, zstd;q=0, gzip;q=0", None),
        ("*", "br"),
        ("*;q=0.1, gzip;q=0.5", "gzip"),
        ("br;q=0, *", "zstd"),
        ("identity", None),
        ("deflate", None),
        ("gzip;q=bogus, br;q=2", None),
        ("GZIP;Q=0.8", "gzip"),
        ("", None),
    ],
)
async def test_negotiation_honours_q_values(accept: str, expected: str | None) -> None:
    assert negotiate_encoding(accept) == expected
    r = await fetch("/json", accept)
    assert r.headers.get("content-encoding") == expected
    assert r.headers["vary"] == "Accept-Encoding"
    body = decode(expected, r.content) if expected else r.content
    assert body == BODY


def test_parse_accept_encoding_keeps_the_highest_weight() -> None:
    assert parse_accept_encoding("gzip;q=0.2, br, gzip;q=0.7, zstd;level=3;q=0.4") == {
        "gzip": 0.7,
        "br": 1.0,
        "zstd": 0.4,
    }


async def test_no_accept_encoding_still_says_vary() -> None:
    r = await fetch("/json", None)
    assert "content-encoding" not in r.headers
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.content == BODY


@pytest.mark.parametrize("accept", [None, "identity", "br;q=0, zstd;q=0, gzip;q=0"])
@pytest.mark.parametrize(
    ("path", "vary", "encoding", "body"),
    [
        ("/json", "Accept-Encoding", None, BODY),
        ("/vary", "Origin, Accept-Encoding", None, BODY),
        ("/png", None, None, BODY),
        ("/no-transform", None, None, BODY),
        ("/encoded", None, "gzip", BODY),  # precompressed: passed on as it is
        ("/stream", "Accept-Encoding", None, b"".join(CHUNKS)),
    ],
)
async def test_nothing_acceptable_only_adds_vary_where_coding_could_differ(
    accept: str | None, path: str, vary: str | None, encoding: str | None, body: bytes
) -> None:
    r = await fetch(path, accept)
    assert r.headers.get("vary") == vary
    assert r.headers.get("content-encoding") == encoding
    assert (gzip.decompress(r.content) if encoding else r.content) == body


async def test_nothing_acceptable_passes_messages_through_and_copies_headers() -> None:
    app_headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    body_message: Message = {"type": "http.response.body", "body": b"{}"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": app_headers})
        await send(body_message)

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"host", b"t")]}
    await CompressionMiddleware(app)(scope, receive, send)
    assert sent[0]["headers"] == [*app_headers, (b"vary", b"Accept-Encoding")]
    assert app_headers == [(b"content-type", b"application/json"), (b"content-length", b"2")]
    assert sent[1] is body_message
    assert len(sent) == 2


async def test_small_bodies_are_not_compressed() -> None:
    r = await fetch("/small", "br, gzip")
    assert "content-encoding" not in r.headers
    assert r.headers["content-length"] == str(len(b'{"ok": true}'))
    assert r.content == b'{"ok": true}'
    assert r.headers["vary"] == "Accept-Encoding"


async def test_minimum_size_is_configurable() -> None:
    r = await fetch("/small", "gzip", app=build(minimum_size=1))
    assert r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(r.content) == b'{"ok": true}'


async def test_already_compressed_image_is_left_alone() -> None:
    r = await fetch("/png", "br, gzip")
    assert "content-encoding" not in r.headers
    assert "vary" not in r.headers
    assert r.content == BODY


async def test_svg_is_an_image_that_compresses() -> None:
    r = await fetch("/svg", "gzip")
    assert r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(r.content) == BODY


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("text/html; charset=utf-8", True),
        ("image/svg+xml", True),
        ("image/png", False),
        ("image/webp", False),
        ("video/mp4", False),
        ("audio/ogg", False),
        ("font/woff2", False),
        ("application/zip", False),
        ("application/gzip", False),
        ("application/grpc+proto", False),
        ("text/event-stream", False),
        ("", False),
    ],
)
def test_compressible_types(content_type: str, expected: bool) -> None:
    mw = CompressionMiddleware(build())
    assert is_compressible_type(content_type, mw.excluded) is expected


async def test_cache_control_no_transform_is_respected() -> None:
    r = await fetch("/no-transform", "br")
    assert "content-encoding" not in r.headers
    assert r.content == BODY


async def test_existing_content_encoding_is_not_compressed_again() -> None:
    r = await fetch("/encoded", "br, gzip")
    assert r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(r.content) == BODY


async def test_vary_is_appended_to_an_existing_vary() -> None:
    r = await fetch("/vary", "gzip")
    assert r.headers["vary"] == "Origin, Accept-Encoding"
    assert gzip.decompress(r.content) == BODY


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
async def test_streaming_chunks_are_compressed_and_flushed_one_by_one(coding: str) -> None:
    seen: list[Message] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        async def spy(message: Message) -> None:
            seen.append(message)
            await send(message)

        await CompressionMiddleware(Starlette(routes=[Route("/stream", stream)]))(
            scope, receive, spy
        )

    r = await fetch("/stream", coding, app=inner)  # type: ignore[arg-type]
    assert r.headers["content-encoding"] == coding
    assert "content-length" not in r.headers
    assert decode(coding, r.content) == b"".join(CHUNKS)
    bodies = [m for m in seen if m["type"] == "http.response.body"]
    assert len(bodies) == len(CHUNKS) + 1  # one per chunk, then the end of the stream
    # Each flushed chunk decodes on its own: a streaming client sees data as it comes.
    if coding == "gzip":
        d = zlib.decompressobj(31)
        assert d.decompress(bodies[0]["body"]) == CHUNKS[0]
    elif coding == "br":
        bd = brotli.Decompressor()
        assert bd.process(bodies[0]["body"]) == CHUNKS[0]
    else:
        zd = zstandard.ZstdDecompressor().decompressobj()
        assert zd.decompress(bodies[0]["body"]) == CHUNKS[0]


async def test_head_has_get_headers_and_no_body() -> None:
    r = await fetch("/json", "br", method="HEAD")
    assert r.status_code == 200
    assert r.headers["content-encoding"] == "br"
    assert r.headers["vary"] == "Accept-Encoding"
    assert "content-length" not in r.headers
    assert r.content == b""


async def test_range_capable_strong_etag_is_weakened_when_compressed() -> None:
    r = await fetch("/ranged", "gzip")
    assert r.headers["etag"] == 'W/"abc"'
    identity = await fetch("/ranged", None)
    assert identity.headers["etag"] == '"abc"'


async def test_api_etag_is_kept_so_if_match_keeps_working() -> None:
    r = await fetch("/api-etag", "gzip")
    assert r.headers["content-encoding"] == "gzip"
    assert r.headers["etag"] == '"v7"'


async def test_partial_content_is_never_compressed() -> None:
    async def partial(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 206,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-range", b"bytes 0-999/5000"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"x" * 1000})

    r = await fetch("/", "gzip", app=CompressionMiddleware(partial))  # type: ignore[arg-type]
    assert r.status_code == 206
    assert "content-encoding" not in r.headers
    assert r.content == b"x" * 1000


async def test_large_bodies_compress_in_a_thread_and_round_trip() -> None:
    big = bytes(range(256)) * 2048  # 512 KiB, above the thread threshold

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await Response(big, media_type="application/octet-stream")(scope, receive, send)

    r = await fetch("/", "zstd", app=CompressionMiddleware(app))  # type: ignore[arg-type]
    assert r.headers["content-encoding"] == "zstd"
    assert decode("zstd", r.content) == big


async def test_non_http_scopes_pass_through() -> None:
    called: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope["type"])

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        return None

    await CompressionMiddleware(app)({"type": "lifespan"}, receive, send)
    assert called == ["lifespan"]


def test_compression_is_slot_11_the_innermost_policy(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    settings = make_settings(tmp_path, compression_min_size=1234)
    stack = policy_middleware(settings)
    assert stack[-1].cls is CompressionMiddleware
    assert stack[-1].kwargs == {"minimum_size": 1234}
