"""The two apps of benchmarks/scale.py, imported by uvicorn (bare) and `stalwart.server` (full).

* `bare_app`: a plain FastAPI app, no middleware, serving the same bytes on the same routes:
  `/health/live` and `/bench/static` (`{"status":"pass"}`, application/health+json) and
  `/api/v1/notes` (token lookup, then 20 notes, through Stalwart's own read path: the
  compiled statements on asyncpg or aiosqlite, without the note cache).
* `full_app`: `stalwart.app.create_app()` (the whole policy stack, the API, the note cache,
  monitoring) plus one route, `/bench/static`, with the same body as `/health/live`. It is
  needed because `/health/live` is exempt from rate limiting (load-balancer probes must never
  be refused), so it cannot show what the limiter costs; `/bench/static` goes through every
  middleware, the limiter included, and is first in the routing table as in the bare app.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import Response

from stalwart.api.notes import note_out
from stalwart.api.schemas import ListPage, NoteOut
from stalwart.credentials import hash_token
from stalwart.data.reads import NoteQuery
from stalwart.settings import Settings

__all__ = ["BODY", "bare_app", "full_app"]

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


def full_app() -> FastAPI:
    from stalwart.app import create_app

    app = create_app()
    app.add_api_route("/bench/static", _static, methods=["GET"], include_in_schema=False)
    # First in the routing table, as in the bare app: the comparison is of the policy stack,
    # not of how many routes the router scans before this one.
    app.router.routes.insert(0, app.router.routes.pop())
    return app
