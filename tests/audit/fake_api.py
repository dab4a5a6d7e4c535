"""An API that meets every check of the audit, with one switch per way of failing one.

Served through httpx.MockTransport at https://api.test (plain http at http://api.test:80), so
each test flips one flaw and sees exactly which check fails; the real-server tests are in
tests/e2e/test_audit.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import orjson

from stalwart.audit import HELMET_EXPECTED

BASE = "https://api.test"
GOOD_HEADERS = {
    **HELMET_EXPECTED,
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
    "strict-transport-security": "max-age=31536000; includeSubDomains",
}
OPENAPI = {
    "openapi": "3.1.0",
    "paths": {
        "/api/v1/things": {
            "get": {},
            "post": {"requestBody": {"required": True, "content": {"application/json": {}}}},
        },
        "/api/v1/things/{thing_id}": {"get": {}, "delete": {}},
        "/api/v1/reindex": {"post": {}},  # takes no body: the audit must never call it
        "/health": {"get": {}},
    },
}


@dataclass
class Flaws:
    headers_on_errors_only: bool = False
    csp: str | None = None
    powered_by_on_errors: bool = False
    hsts_elsewhere: str | None = None  # HSTS value on every answer but GET /
    http_served: bool = False
    http_drops_after: float | None = None  # plain http: connecting times out after this long
    redirect_to: str | None = None
    rate_policy: str = '"default";q=100;w=900'
    counts: bool = True
    rate_limited: bool = False
    item_read_500: bool = False
    accepts_big_bodies: bool = False
    cors_reflects_get: bool = False
    monitor_body: bytes | None = None
    health: tuple[int, bytes, str] | None = None
    openapi: bytes | None = None
    not_found_body: tuple[str, bytes] | None = None
    server_header: str | None = None
    trickle: bool = False
    huge: bool = False


@dataclass
class FakeApi:
    flaws: Flaws = field(default_factory=Flaws)
    requests: list[httpx.Request] = field(default_factory=list)
    remaining: int = 100
    huge: _Huge | None = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def problem(self, status: int, headers: dict[str, str] | None = None) -> httpx.Response:
        body = orjson.dumps({"type": "about:blank", "title": "Error", "status": status})
        return self.answer(status, body, "application/problem+json", headers)

    def answer(
        self, status: int, body: bytes | httpx.AsyncByteStream, media_type: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        fields = dict(GOOD_HEADERS)
        if self.flaws.headers_on_errors_only and status < 400:
            fields = {}
        if self.flaws.csp is not None:
            fields["content-security-policy"] = self.flaws.csp
        if self.flaws.powered_by_on_errors and status >= 400:
            fields["x-powered-by"] = "Express 4.17.1"
        if self.flaws.server_header is not None:
            fields["server"] = self.flaws.server_header
        fields |= {"content-type": media_type, **(headers or {})}
        # A stream, as from a server: the audit reads bodies chunk by chunk.
        stream = httpx.ByteStream(body) if isinstance(body, bytes) else body
        return httpx.Response(status, headers=fields, stream=stream)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        flaws, path = self.flaws, request.url.path
        if request.url.scheme == "http":
            if flaws.http_served:
                return httpx.Response(200, stream=httpx.ByteStream(b"hello"))
            if flaws.http_drops_after is not None:
                return self._dropped(request, flaws.http_drops_after)  # type: ignore[return-value]
            if flaws.redirect_to is not None:
                return httpx.Response(301, headers={"location": flaws.redirect_to}, stream=httpx.ByteStream(b""))
            raise httpx.ConnectError("refused", request=request)
        response = self.route(request, path)
        if flaws.hsts_elsewhere is not None and path != "/":
            response.headers["strict-transport-security"] = flaws.hsts_elsewhere
        return response

    async def _dropped(self, request: httpx.Request, after: float) -> httpx.Response:
        # What httpx does against a port whose packets are dropped: its connect timeout.
        await asyncio.sleep(after)
        raise httpx.ConnectTimeout("timed out", request=request)

    def route(self, request: httpx.Request, path: str) -> httpx.Response:
        flaws = self.flaws
        if flaws.rate_limited and path.startswith("/api/"):
            return self.problem(429, {"retry-after": "60"})
        if path == "/openapi.json":
            return self.answer(200, flaws.openapi or orjson.dumps(OPENAPI), "application/json")
        if path == "/health":
            healthy = (200, b'{"status":"pass","checks":{}}', "application/health+json")
            status, body, media_type = flaws.health or healthy
            return self.answer(status, body, media_type)
        if path == "/api/monitor":
            if flaws.monitor_body is not None:
                return self.answer(401, flaws.monitor_body, "application/json")
            return self.problem(401)
        if request.method == "OPTIONS":
            return self.problem(400)
        if path == "/api/v1/things" and request.method == "GET":
            self.remaining -= flaws.counts
            headers = {"ratelimit-policy": flaws.rate_policy, "ratelimit": f'"default";r={self.remaining};t=900'}
            if (origin := request.headers.get("origin")) and flaws.cors_reflects_get:
                headers |= {"access-control-allow-origin": origin, "access-control-allow-credentials": "true"}
            return self.problem(401, headers)
        if path == "/api/v1/things/audit-0" and request.method == "GET":
            if flaws.item_read_500:
                body = b'Traceback (most recent call last):\n  File "/srv/app/db.py", line 3\nSELECT * FROM things'
                return self.answer(500, body, "text/plain")
            return self.problem(404)
        if path == "/api/v1/things" and request.method == "POST":
            body = request.read()
            if len(body) > 1 << 20 and not flaws.accepts_big_bodies:
                return self.problem(413)
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                if not flaws.accepts_big_bodies:
                    return self.problem(400)
            return self.answer(201, b"{}", "application/json")
        if flaws.trickle and path != "/":
            return self.answer(404, _Trickle(), "application/problem+json")
        if flaws.huge:
            self.huge = _Huge()
            return self.answer(404, self.huge, "application/problem+json")
        if flaws.not_found_body is not None:
            media_type, body = flaws.not_found_body
            return self.answer(404, body, media_type)
        return self.problem(404)


class _Trickle(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(1000):
            await asyncio.sleep(0.2)
            yield b" "


class _Huge(httpx.AsyncByteStream):
    """300 MiB, made as it is read: the audit must stop reading long before."""

    def __init__(self) -> None:
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunk = b"x" * 65536
        for _ in range(4800):
            self.sent += len(chunk)
            yield chunk
