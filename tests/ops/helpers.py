"""Helpers for the data-lifecycle tests: scratch databases, seeding, counting, CLI env."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from stalwart.data.engine import Database
from stalwart.data.migrate import migrate_to
from stalwart.data.models import Account, AuditEvent, Note, NoteTag, Token, new_id
from stalwart.data.types import utcnow
from stalwart.settings import Settings
from tests.conftest import PG_ADMIN_DSN, _pg_available, require_service

__all__ = [
    "all_rows",
    "count_tables",
    "destroy_database",
    "pg_admin",
    "remains_of",
    "scratch_postgres",
    "seed",
]


def pg_admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextlib.contextmanager
def scratch_postgres(migrate: bool = True, template: str | None = None) -> Iterator[str]:
    """A throwaway PostgreSQL database (its own name: tests may drop and recreate it).

    `template`: copy that (already migrated) database instead of migrating: faster.
    """
    require_service(_pg_available(), "PostgreSQL at 127.0.0.1:5432")
    name = f"stalwart_ops_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    try:
        if migrate and template is None:
            migrate_to(url, "head")
        yield url
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        # Scratch databases made by `backup verify` carry this name as their prefix.
        _drop_verify_leftovers(name)


def _drop_verify_leftovers(name: str) -> None:
    import asyncpg

    async def run() -> list[str]:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", f"{name}_verify_%")
            return [r[0] for r in rows]
        finally:
            await conn.close()

    for leftover in asyncio.run(run()):
        pg_admin(f'DROP DATABASE IF EXISTS "{leftover}" WITH (FORCE)')


def destroy_database(url: str) -> None:
    """The disaster: the database is gone (SQLite file deleted; PostgreSQL database dropped)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(str(parsed.database))
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
    else:
        pg_admin(f'DROP DATABASE "{parsed.database}" WITH (FORCE)')


async def count_tables(settings: Settings) -> dict[str, int]:
    db = Database(settings)
    await db.start()
    try:
        async with db.engine.connect() as conn:
            if db.is_sqlite:
                names = [
                    r[0]
                    for r in await conn.execute(
                        text("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")
                    )
                ]
            else:
                names = [
                    r[0]
                    for r in await conn.execute(
                        text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
                    )
                ]
            return {n: int((await conn.execute(text(f'SELECT count(*) FROM "{n}"'))).scalar_one()) for n in names}
    finally:
        await db.close()


async def all_rows(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, as tuples (for "nothing of X remains" checks)."""
    db = Database(settings)
    await db.start()
    try:
        async with db.engine.connect() as conn:
            out: dict[str, list[tuple[Any, ...]]] = {}
            for table in (Account.__table__, Token.__table__, Note.__table__, NoteTag.__table__, AuditEvent.__table__):
                out[table.name] = [tuple(r) for r in await conn.execute(select(table))]
            return out
    finally:
        await db.close()


async def seed(
    settings: Settings,
    *,
    accounts: int = 2,
    notes: int = 3,
    email_prefix: str = "seed",
    last_login: bool = True,
) -> list[str]:
    """Accounts with notes (tagged, one trashed), a token and an audit event each."""
    db = Database(settings)
    await db.start()
    ids: list[str] = []
    now = utcnow()
    try:
        async with db.session() as session:
            for i in range(accounts):
                account = Account(
                    id=new_id(),
                    email=f"{email_prefix}-{i}-{uuid.uuid4().hex[:6]}@example.com",
                    password_hash="$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
                    display_name=f"Seed {i}",
                    role="user",
                    last_login_at=now if last_login else None,
                )
                ids.append(account.id)
                notes_of = [
                    Note(
                        id=new_id(),
                        account_id=account.id,
                        title=f"note {j}",
                        body="x" * 50,
                        tags=["a", "b"],
                        deleted_at=now if j == 0 else None,
                    )
                    for j in range(notes)
                ]
                session.add(account)
                await session.flush()
                session.add_all(notes_of)
                await session.flush()
                session.add_all(
                    [NoteTag(note_id=n.id, tag=t, account_id=account.id) for n in notes_of for t in ("a", "b")]
                )
                session.add(
                    Token(account_id=account.id, token_hash=uuid.uuid4().hex * 2, expires_at=now + timedelta(days=1))
                )
                session.add(
                    AuditEvent(event="auth.login", subject=account.id, actor=account.id, ip="203.0.113.0", details={})
                )
            await session.commit()
    finally:
        await db.close()
    return ids


def sqlite_path(url: str) -> Path:
    return Path(str(make_url(url).database))


def sqlite_count(url: str, table: str) -> int:
    conn = sqlite3.connect(sqlite_path(url))
    try:
        return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    finally:
        conn.close()


def at(days_ago: float) -> datetime:
    return utcnow() - timedelta(days=days_ago)


async def remains_of(settings: Settings, account_id: str, email: str) -> dict[str, list[Any]]:
    """Rows, table by table, where the account's id or email still appears in any column."""
    found: dict[str, list[Any]] = {}
    for table, rows in (await all_rows(settings)).items():
        hits = [r for r in rows if any(account_id in str(v) or email in str(v) for v in r)]
        if hits:
            found[table] = hits
    return found
