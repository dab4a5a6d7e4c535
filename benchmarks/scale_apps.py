"""The two apps of benchmarks/scale.py, imported by uvicorn (bare) and `stalwart.server` (full).

* `bare_app`: a plain FastAPI app, no middleware, serving the same bytes on the same routes:
  `/health/live` and `/bench/static` (`{"status":"pass"}`, application/health+json) and
  `/api/v1/notes` (token lookup, then 20 notes, through Stalwart's own read path: the
  compiled statements on asyncpg or aiosqlite, without the note cache).
* `floor_app`: the bare app inside `FloorLayer`, one hand-written ASGI layer that produces what
  the policy makes visible on a trivial route and nothing else: the same response headers
  (the fixed ones as one prepared block under `stalwart serve`, as the full service does)
  (the security set, `X-Request-ID`, `RateLimit-Policy`/`RateLimit` from a fixed-window count,
  `Vary`), one JSON access-log line, and a request count and latency bucket per route. No
  error boundary, no CORS, no body limit, no draining, no refusal path: a floor for what any
  implementation of the policy costs on this server, not a usable service.
* `full_app`: `stalwart.app.create_app()` (the whole policy stack, the API, the note cache,
  monitoring) plus one route, `/bench/static`, with the same body as `/health/live`. It is
  needed because `/health/live` is exempt from rate limiting (load-balancer probes must never
  be refused), so it cannot show what the limiter costs; `/bench/static` goes through every
  middleware, the limiter included, and is first in the routing table as in the bare app.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from math import ceil
from time import perf_counter, time
from typing import Any

import orjson
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.api.notes import note_out
from stalwart.api.schemas import ListPage, NoteOut
from stalwart.credentials import hash_token
from stalwart.data.reads import NoteQuery
from stalwart.policies.exchange import BLOCK, PREPARED_FIELDS, render_fields
from stalwart.policies.headers import HELMET_HEADERS, JSON_CSP, hsts_value
from stalwart.policies.request_log import ACCESS_LOG, anonymize_ip, new_request_id
from stalwart.policies.timestamps import utc_timestamp
from stalwart.settings import Settings

__all__ = ["BODY", "FloorLayer", "bare_app", "floor_app", "full_app"]

BODY = b'{"status":"pass"}'
_MEDIA_TYPE = "application/health+json"
_HEADERS = {"Cache-Control": "no-store"}


async def _static() -> Response:
    return Response(BODY, media_type=_MEDIA_TYPE, headers=_HEADERS)


def bare_app() -> FastAPI:
    from stalwart.data.engine import Database

    url = os.environ["BENCH_DATABASE_URL"]
    pool = int(os.environ.get("BENCH_POOL_SIZE", "10"))
    db = Database(
        Settings(_env_file=None, database_url=url, db_pool_size=pool, db_max_overflow=0)  # type: ignore[call-arg]
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await db.start()
        yield
        await db.close()

    app = FastAPI(lifespan=lifespan)
    app.add_api_route("/health/live", _static, methods=["GET"])
    app.add_api_route("/bench/static", _static, methods=["GET"])

    @app.get("/api/v1/notes", response_model=ListPage[NoteOut])
    async def notes(authorization: str = Header()) -> ListPage[NoteOut]:
        principal = await db.reads.principal(hash_token(authorization.removeprefix("Bearer ")))
        if principal is None:
            raise HTTPException(401)
        rows = await db.reads.list_notes(NoteQuery(account_id=principal.account_id, limit=21))
        return ListPage[NoteOut](data=[note_out(r) for r in rows[:20]], next=None)

    return app


_LIMIT = 1_000_000_000
_WINDOW = 3600.0
_VARY = (b"vary", b"Origin, Accept-Encoding")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class FloorLayer:
    """One layer producing the policy's visible output on a trivial route (see the module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # In the full service's order: the security set, then X-Request-ID, RateLimit, Vary.
        security = {"content-security-policy": JSON_CSP, "x-frame-options": "DENY"}
        security |= {name.lower(): value for name, value in HELMET_HEADERS}
        security["permissions-policy"] = Settings.model_fields["permissions_policy"].default
        security["strict-transport-security"] = hsts_value(31_536_000)
        policy = f'"{_LIMIT}-in-1h"'.encode()
        self.fixed = [(name.encode(), value.encode()) for name, value in security.items()]
        # Under `stalwart serve` the fixed fields go as one block rendered here, as the full
        # service sends them (stalwart/prepared_fields.py): the floor is the cheapest way.
        self.block = render_fields(self.fixed)
        self.ratelimit_policy = (b"ratelimit-policy", policy + b";q=%d;w=%d" % (_LIMIT, _WINDOW))
        self.state_prefix = policy + b";r="
        self.windows: dict[str, tuple[int, float]] = {}
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[int]] = {}
        self.log = ACCESS_LOG

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client: str = scope["client"][0]
        user_agent: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                client = value.rsplit(b",", 1)[-1].strip().decode("latin-1")
            elif name == b"user-agent":
                user_agent = value
        request_id = new_request_id()
        started, now = perf_counter(), time()
        count, reset = self.windows.get(client, (0, 0.0))
        if now >= reset:
            count, reset = 0, now + _WINDOW
        self.windows[client] = (count + 1, reset)
        extensions = scope.get("extensions")
        slot = extensions.get(PREPARED_FIELDS) if extensions is not None else None
        block = self.block if type(slot) is dict else None
        added = [
            *(self.fixed if block is None else ()),
            (b"x-request-id", request_id.encode()),
            self.ratelimit_policy,
            (b"ratelimit", self.state_prefix + b"%d;t=%d" % (_LIMIT - count - 1, ceil(reset - now))),
            _VARY,
        ]
        sent = [0, 0]  # status, body bytes

        def floor_send(message: Message) -> Any:
            if message["type"] == "http.response.start":
                sent[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), *added]
                if block is not None:
                    slot[BLOCK] = block
            else:
                sent[1] += len(message.get("body", b""))
            return send(message)

        try:
            await self.app(scope, receive, floor_send)
        finally:
            duration = perf_counter() - started
            route = getattr(scope.get("route"), "path", "<unmatched>")
            key = (route, scope["method"], sent[0] // 100)
            self.requests[key] = self.requests.get(key, 0) + 1
            buckets = self.latency.get(route) or self.latency.setdefault(route, [0] * 12)
            buckets[bisect_left(_BUCKETS, duration)] += 1
            line: dict[str, Any] = {
                "timestamp": utc_timestamp(now),
                "level": "INFO",
                "logger": "stalwart.access",
                "request.id": request_id,
                "client.address": anonymize_ip(client),
                "http.request.method": scope["method"],
                "http.route": route,
                "url.path": scope["path"],
                "http.response.status_code": sent[0],
                "duration_ms": int(duration * 1e6) / 1000,
                "http.response.body.size": sent[1],
            }
            if user_agent is not None:
                line["user_agent.original"] = user_agent[:512].decode("latin-1")
            self.log.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))


def floor_app() -> FastAPI:
    app = bare_app()
    app.add_middleware(FloorLayer)
    return app


def full_app() -> FastAPI:
    from stalwart.app import create_app

    app = create_app()
    app.add_api_route("/bench/static", _static, methods=["GET"], include_in_schema=False)
    # First in the routing table, as in the bare app: the comparison is of the policy stack,
    # not of how many routes the router scans before this one.
    app.router.routes.insert(0, app.router.routes.pop())
    return app
