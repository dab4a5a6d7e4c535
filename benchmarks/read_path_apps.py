"""Three minimal apps serving the same authenticated list of 20 notes, differing only in the
data path: SQLAlchemy's async ORM session, a raw asyncpg pool with hand-written SQL, and
Stalwart's read path (SQLAlchemy Core statements compiled once, run on asyncpg)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Header, HTTPException

from stalwart.api.notes import note_out
from stalwart.api.schemas import ListPage, NoteOut
from stalwart.credentials import hash_token
from stalwart.data.reads import NoteQuery, NoteRow
from stalwart.settings import Settings

DSN = os.environ.get("BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


def _token(authorization: str) -> str:
    return hash_token(authorization.removeprefix("Bearer "))


def orm_app() -> FastAPI:
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from stalwart.data.models import Account, Note, Token
    from stalwart.data.types import utcnow

    engine = create_async_engine(DSN, pool_size=10)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/notes", response_model=ListPage[NoteOut])
    async def notes(authorization: str = Header()) -> ListPage[NoteOut]:
        async with sessions() as s:
            account_id = await s.scalar(
                select(Account.id).join(Token, Token.account_id == Account.id).where(
                    Token.token_hash == _token(authorization), Token.revoked_at.is_(None),
                    Token.expires_at > utcnow(),
                )
            )
            if account_id is None:
                raise HTTPException(401)
            rows = (await s.scalars(
                select(Note).where(Note.account_id == account_id, Note.deleted_at.is_(None))
                .order_by(Note.created_at.desc(), Note.id.desc()).limit(21)
            )).all()
        return ListPage[NoteOut](data=[note_out(r) for r in rows[:20]], next=None)

    return app


def raw_app() -> FastAPI:
    import asyncpg
    import orjson

    from stalwart.data.types import utcnow

    pool: Any = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal pool
        pool = await asyncpg.create_pool(DSN.replace("+asyncpg", ""), min_size=1, max_size=10)
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/notes", response_model=ListPage[NoteOut])
    async def notes(authorization: str = Header()) -> ListPage[NoteOut]:
        async with pool.acquire() as conn:
            account_id = await conn.fetchval(
                "SELECT a.id FROM tokens t JOIN accounts a ON a.id = t.account_id "
                "WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > $2",
                _token(authorization), utcnow(),
            )
        if account_id is None:
            raise HTTPException(401)
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, title, body, tags, created_at, updated_at, version FROM notes "
                "WHERE account_id = $1 AND deleted_at IS NULL "
                "ORDER BY created_at DESC, id DESC LIMIT $2", account_id, 21,
            )
        data = [note_out(NoteRow(r[0], r[1], r[2], orjson.loads(r[3]), r[4], r[5], r[6])) for r in rows]
        return ListPage[NoteOut](data=data[:20], next=None)

    return app


def stalwart_app() -> FastAPI:
    from stalwart.data.engine import Database

    db = Database(Settings(_env_file=None, database_url=DSN, db_pool_size=10))  # type: ignore[call-arg]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await db.start()
        yield
        await db.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/notes", response_model=ListPage[NoteOut])
    async def notes(authorization: str = Header()) -> ListPage[NoteOut]:
        principal = await db.reads.principal(_token(authorization))
        if principal is None:
            raise HTTPException(401)
        rows = await db.reads.list_notes(NoteQuery(account_id=principal.account_id, limit=21))
        return ListPage[NoteOut](data=[note_out(r) for r in rows[:20]], next=None)

    return app
