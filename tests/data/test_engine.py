"""A database that is down or exhausted gives a quick 503 problem, never a hang or a 500."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from stalwart.app import create_app
from stalwart.data.engine import Database
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


async def test_database_down_is_503_with_retry_after(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none", db_pool_timeout=1.0
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=transport, base_url="http://t"
    ) as c:
        started = time.monotonic()
        r = await c.get("/api/v1/notes", headers={"Authorization": "Bearer stw_x"})
        r2 = await c.post(
            "/api/v1/accounts",
            json={"email": "a@example.com", "password": "long enough pw", "display_name": "a"},
        )
        elapsed = time.monotonic() - started
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"] == "2"
    assert r2.status_code == 503
    assert "127.0.0.1" not in r.text
    assert "asyncpg" not in r.text
    assert elapsed < 8


async def test_pool_exhaustion_is_quick_503(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(
        tmp_path, database_url=database_url, db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.3
    )
    app = create_app(settings)
    db = app.state.resources.db
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=transport, base_url="http://t"
    ) as c:
        held = await db.engine.connect()  # the only connection of the write pool
        reads_held = None
        reads = getattr(db.reads, "inner", db.reads)  # under the note cache
        if db.is_postgres:
            reads_held = await reads.pool.acquire()
        try:
            started = time.monotonic()
            r = await c.post(
                "/api/v1/accounts",
                json={"email": "a@example.com", "password": "long enough pw", "display_name": "a"},
            )
            r2 = await c.get("/api/v1/notes", headers={"Authorization": "Bearer stw_x"})
            elapsed = time.monotonic() - started
        finally:
            if reads_held is not None:
                await reads.pool.release(reads_held)
            await held.close()
        r3 = await c.get("/api/v1/notes", headers={"Authorization": "Bearer stw_x"})
    assert r.status_code == 503
    assert r2.status_code == 503
    assert r.headers["retry-after"] == "2"
    assert elapsed < 3
    assert r3.status_code == 401  # recovered once the connection is back
    await asyncio.sleep(0)


def test_a_sqlite_connection_cancelled_while_closing_leaves_nothing_that_outlives_the_loop(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """A query cancelled twice while SQLite waits for a lock (as cancel_all does at shutdown)
    makes SQLAlchemy close the connection gracefully and then force it. With aiosqlite 0.22 the
    graceful close then waited forever on the stopped thread, so closing the event loop hung."""
    path = tmp_path / "data" / "stalwart.db"
    path.parent.mkdir(mode=0o700)
    shutil.copy(sqlite_template, path)
    settings = make_settings(tmp_path, database_url=f"sqlite+aiosqlite:///{path}")

    async def write(db: Database) -> None:
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE waits_for_the_lock (x INTEGER)"))

    async def scenario() -> tuple[int, list[str]]:
        db = Database(settings)
        await db.start()
        await db.ping()
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            writer = asyncio.create_task(write(db))
            await asyncio.sleep(0.3)  # its SQLite thread now waits for the lock (busy_timeout)
            for _ in range(2):
                writer.cancel()
                await asyncio.sleep(0.1)
            closing = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
            for task in closing:
                task.cancel()  # what closing the event loop does to a task left running: once
        finally:
            holder.rollback()
            holder.close()
        _, stuck = await asyncio.wait(closing, timeout=8) if closing else (set(), set())
        names = sorted(t.get_coro().__qualname__ for t in stuck)  # type: ignore[union-attr]
        for task in stuck:
            task.cancel()  # a second cancellation frees it, so this loop can close
        await asyncio.wait(stuck, timeout=8) if stuck else None
        await db.close()
        return len(closing), names

    closing, stuck = asyncio.run(scenario())
    assert closing >= 1  # the graceful close was running: the case this test is about
    assert stuck == []
