"""Shared fixtures: settings per test, the app on SQLite and on PostgreSQL, an HTTP client."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from stalwart.app import create_app
from stalwart.data.migrate import migrate_to
from stalwart.settings import Settings

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Cheap argon2 for tests; production refuses these values (see production_problems).
FAST_HASH = {"argon2_time_cost": 1, "argon2_memory_kib": 64, "argon2_parallelism": 1}


@contextmanager
def captured_records(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Records of one logger, through a handler of its own (independent of any logging
    configuration other tests may have applied)."""
    records: list[logging.LogRecord] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(logger_name)
    handler = ListHandler(logging.DEBUG)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _pg_available() -> bool:
    import asyncpg

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def require_service(available: bool, name: str) -> None:
    """Skip when a service is down, except under CI where the suite must run in full."""
    if not available:
        if IN_CI:
            pytest.fail(f"{name} is not reachable and CI=true: these tests must not skip")
        pytest.skip(f"{name} is not reachable")


class PostgresDatabase:
    """One throwaway database per test session (per xdist worker), dropped at the end."""

    def __init__(self) -> None:
        self.name = f"stalwart_test_{uuid.uuid4().hex[:12]}"
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.name}"

    async def _admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create(self) -> None:
        asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        migrate_to(self.url, "head")

    def drop(self) -> None:
        asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))

    def truncate(self) -> None:
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(self.url.replace("+asyncpg", ""))
            try:
                await conn.execute(
                    "TRUNCATE accounts, tokens, notes, note_tags, audit_events CASCADE"
                )
            finally:
                await conn.close()

        asyncio.run(run())


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[PostgresDatabase]:
    require_service(_pg_available(), "PostgreSQL at 127.0.0.1:5432")
    db = PostgresDatabase()
    db.create()
    yield db
    db.drop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "stalwart.db"
    migrate_to(f"sqlite+aiosqlite:///{path}", "head")
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        target = tmp_path / "data" / "stalwart.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sqlite_template, target)
        return f"sqlite+aiosqlite:///{target}"
    pg: PostgresDatabase = request.getfixturevalue("postgres_db")
    pg.truncate()
    return pg.url


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "data_dir": tmp_path / "data",
        "rate_limit": "100000/15minutes",
        "rate_limit_login": "100000/15minutes",
        "rate_limit_login_account": "100000/15minutes",
        "rate_limit_backend": "memory",
        **FAST_HASH,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url=database_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


class Account:
    def __init__(self, client: httpx.AsyncClient, email: str, password: str, data: dict[str, Any]):
        self.client = client
        self.email = email
        self.password = password
        self.id: str = data["id"]
        self.token = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def signup(client: httpx.AsyncClient, name: str = "user") -> Account:
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    password = f"pw-{uuid.uuid4().hex}"
    r = await client.post(
        "/api/v1/accounts", json={"email": email, "password": password, "display_name": name}
    )
    assert r.status_code == 201, r.text
    account = Account(client, email, password, r.json())
    r = await client.post("/api/v1/auth/tokens", json={"email": email, "password": password})
    assert r.status_code == 201, r.text
    account.token = r.json()["token"]
    return account


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> Account:
    return await signup(client, "alice")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> Account:
    return await signup(client, "bob")


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A unique key prefix on the real Redis (fails under CI if Redis is down); keys removed after."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    prefix = f"stalwart-test-{uuid.uuid4().hex}:"
    client = Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
    try:
        await client.ping()
    except (RedisError, OSError):
        await client.aclose()
        require_service(False, "Redis at 127.0.0.1:6379")
    try:
        yield prefix
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
