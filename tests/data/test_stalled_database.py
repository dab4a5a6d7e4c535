"""A database that stops answering (frozen host, black-holed route) or drops its connections
mid-query gives a 503, never a hang or a 500.

PostgreSQL's statement_timeout cannot help here: the server never sees the query, or its
answer never arrives. Only a client-side bound ends the wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi import FastAPI

from stalwart.app import create_app
from tests.conftest import Account, PostgresDatabase, make_settings, signup
from tests.stalling_proxy import StallingProxy

pytestmark = pytest.mark.anyio


@pytest.fixture
async def proxy() -> AsyncIterator[StallingProxy]:
    proxy = await StallingProxy("127.0.0.1", 5432).start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
def pg_url(postgres_db: PostgresDatabase) -> str:
    postgres_db.truncate()
    return postgres_db.url


@pytest.fixture
async def proxied_app(tmp_path: Path, pg_url: str, proxy: StallingProxy) -> AsyncIterator[FastAPI]:
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = make_settings(
        tmp_path, database_url=url, db_statement_timeout_ms=1000, db_pool_timeout=0.5,
        cache_ttl_seconds=0,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        try:
            yield app
        finally:
            proxy.resume()  # the close of the pools is not what this test measures


@pytest.fixture
async def signed_in(proxied_app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, Account]]:
    """A client with an account whose first read went through: pooled connections to reuse."""
    transport = httpx.ASGITransport(app=proxied_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        account = await signup(c)
        assert (await c.get("/api/v1/notes", headers=account.headers)).status_code == 200
        yield c, account


async def test_requests_on_pooled_connections_get_503_when_the_database_stops_answering(
    signed_in: tuple[httpx.AsyncClient, Account], proxy: StallingProxy
) -> None:
    c, account = signed_in
    # This read and the fixture's warm both pools (the write pool and the hot-read pool).
    assert (await c.get("/api/v1/me", headers=account.headers)).status_code == 200
    proxy.stall()
    started = time.monotonic()
    # Bounded here so that a hang fails the test instead of the whole run.
    with anyio.fail_after(30):
        reads = await c.get("/api/v1/notes", headers=account.headers)
        write = await c.post("/api/v1/notes", headers=account.headers, json={"title": "t", "body": "b"})
    elapsed = time.monotonic() - started
    for response in (reads, write):
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["request_id"]
    assert elapsed < 15


async def test_connections_dropped_mid_query_get_503_not_500(
    signed_in: tuple[httpx.AsyncClient, Account], proxy: StallingProxy
) -> None:
    c, account = signed_in
    proxy.stall()
    # The token lookup (hot-read pool) is sent and waits for its answer...
    pending = asyncio.ensure_future(c.get("/api/v1/notes", headers=account.headers))
    await asyncio.sleep(0.3)
    assert not pending.done()
    proxy.drop()  # ...when the server's end of the connection goes away.
    with anyio.fail_after(30):
        response = await pending
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "2"
    # And the pool recovers by itself once the database answers again.
    assert (await c.get("/api/v1/notes", headers=account.headers)).status_code == 200
