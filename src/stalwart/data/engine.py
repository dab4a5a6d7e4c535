"""The database: SQLAlchemy async engine for writes and schema, a lean path for hot reads."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from stalwart.data.reads import AsyncpgReads, ReadPath, SQLAlchemyReads
from stalwart.data.sqlite_file import prepare_sqlite_file
from stalwart.settings import Settings

__all__ = ["Database"]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run during a write (and during an online backup).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_stop_once(dbapi_connection: Any, _record: Any) -> None:
    """Make aiosqlite's `stop()` answer every call with the first call's future.

    aiosqlite 0.22's worker thread exits on the first stop; a later stop queues work that no thread
    runs and returns a future that never resolves. SQLAlchemy stops a connection twice when a
    graceful close is cancelled (it forces the close, and the close it cancelled stops again in its
    `finally`): that close then waited forever, and closing the event loop with it (a hang at
    shutdown). The first future resolves when the thread has stopped, which is what both wait for.
    """
    connection = dbapi_connection.driver_connection
    stop = connection.stop
    first: list[asyncio.Future[Any] | None] = []

    def once() -> asyncio.Future[Any] | None:
        if not first:
            first.append(stop())
        return first[0]

    connection.stop = once


class Database:
    def __init__(self, settings: Settings, url: str | None = None) -> None:
        self.settings = settings
        self.url = make_url(url or settings.effective_database_url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        kwargs: dict[str, Any] = {
            "pool_size": settings.db_pool_size,
            "max_overflow": settings.db_max_overflow,
            "pool_timeout": settings.db_pool_timeout,
            "pool_recycle": settings.db_pool_recycle,
        }
        if self.is_postgres:
            kwargs.update(
                pool_pre_ping=True,
                connect_args={
                    "timeout": settings.db_pool_timeout,
                    "command_timeout": settings.db_command_timeout,
                    "server_settings": {
                        "statement_timeout": str(settings.db_statement_timeout_ms),
                        "application_name": settings.service_id,
                    },
                },
            )
        elif self.is_sqlite:
            kwargs.update(connect_args={"timeout": 5})
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "connect", _sqlite_stop_once)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.reads: ReadPath = SQLAlchemyReads(self.engine)

    @property
    def sqlite_path(self) -> str | None:
        return self.url.database if self.is_sqlite else None

    async def start(self) -> None:
        if self.is_sqlite:
            prepare_sqlite_file(self.url.database)
        if self.is_postgres:
            reads = AsyncpgReads(self.url, self.settings)
            await reads.start()
            self.reads = reads

    async def close(self) -> None:
        await self.reads.close()
        await self.engine.dispose()

    def session(self) -> AsyncSession:
        return self.sessions()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    def pool_status(self) -> dict[str, int]:
        pool: Any = self.engine.pool
        status = {"size": 0, "checked_out": 0, "idle": 0, "overflow": 0}
        for key, attr in (("size", "size"), ("checked_out", "checkedout"), ("idle", "checkedin"),
                          ("overflow", "overflow")):
            fn = getattr(pool, attr, None)
            if callable(fn):
                status[key] = max(int(fn()), 0)
        status.update(self.reads.pool_status())
        return status
