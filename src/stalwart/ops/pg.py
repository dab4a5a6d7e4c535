"""PostgreSQL client tools (pg_dump, pg_restore, psql) and database admin for backup/restore.

The password never goes on a command line (visible in `ps`) or in the environment: it is
written to a 0600 passfile that libpq reads through the `passfile` connection parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

__all__ = [
    "PgToolError",
    "asyncpg_dsn",
    "conninfo",
    "count_rows",
    "create_database",
    "drop_database",
    "ensure_database",
    "passfile",
    "quote_ident",
    "run_tool",
    "tool",
]

# libpq parameters worth passing through from the URL's query string.
_PASSTHROUGH = (
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "connect_timeout",
    "target_session_attrs",
    "options",
)


class PgToolError(Exception):
    """A PostgreSQL client tool is missing or failed; the message is one line."""


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PgToolError(f"{name} not found: install the PostgreSQL client tools (postgresql-client)")
    return path


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def asyncpg_dsn(url: URL | str, database: str | None = None) -> str:
    parsed = make_url(url) if isinstance(url, str) else url
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def passfile(url: URL) -> Iterator[Path | None]:
    if not url.password:
        yield None
        return
    escaped = str(url.password).replace("\\", "\\\\").replace(":", "\\:")
    with tempfile.TemporaryDirectory(prefix="stalwart-pg-") as tmp:
        path = Path(tmp) / "pgpass"
        path.touch(mode=0o600)
        path.write_text(f"*:*:*:*:{escaped}\n")
        yield path


def conninfo(url: URL, pass_path: Path | None, database: str | None = None) -> str:
    query: dict[str, Any] = dict(url.query)
    params: dict[str, str] = {}
    host = query.get("host") or url.host
    if host:
        params["host"] = str(host)
    if url.port:
        params["port"] = str(url.port)
    params["dbname"] = database or url.database or "postgres"
    if url.username:
        params["user"] = url.username
    if pass_path is not None:
        params["passfile"] = str(pass_path)
    if "ssl" in query and "sslmode" not in query:
        query["sslmode"] = query["ssl"]
    for key in _PASSTHROUGH:
        if key in query:
            params[key] = str(query[key])
    return " ".join(f"{k}={_quote(v)}" for k, v in params.items())


def run_tool(args: list[str], *, timeout: float = 3600) -> None:
    """Run a client tool; raise with its last error line."""
    try:
        result = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise PgToolError(f"{Path(args[0]).name} timed out after {timeout:.0f} s") from None
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.decode(errors="replace").splitlines() if ln.strip()]
        raise PgToolError(f"{Path(args[0]).name} failed: {lines[-1] if lines else result.returncode}")


async def _admin(url: URL, sql: str) -> None:
    import asyncpg

    last: Exception | None = None
    for maintenance in ("postgres", "template1"):
        try:
            conn = await asyncpg.connect(asyncpg_dsn(url, maintenance), timeout=10)
        except asyncpg.InvalidCatalogNameError as exc:
            last = exc
            continue
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
        return
    raise PgToolError(f"cannot reach a maintenance database: {last}")


async def _exists(url: URL) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
    except asyncpg.InvalidCatalogNameError:
        return False
    await conn.close()
    return True


def create_database(url: URL, name: str) -> None:
    asyncio.run(_admin(url, f"CREATE DATABASE {quote_ident(name)}"))


def drop_database(url: URL, name: str, timeout: float | None = None) -> None:
    """Drop `name` (its sessions too); `timeout` bounds the whole call (default: unbounded)."""
    sql = f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)"
    asyncio.run(asyncio.wait_for(_admin(url, sql), timeout))


def ensure_database(url: URL) -> bool:
    """Create the URL's database when it does not exist (a destroyed database). True: created."""
    if asyncio.run(_exists(url)):
        return False
    create_database(url, str(url.database))
    return True


async def count_rows_async(conn: Any) -> dict[str, int]:
    tables = [
        r[0]
        for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename"
        )
    ]
    counts: dict[str, int] = {}
    for table in tables:
        # Table names come from the catalog and are quoted: no user input reaches this SQL.
        counts[table] = int(await conn.fetchval(f"SELECT count(*) FROM {quote_ident(table)}"))  # noqa: S608
    return counts


def count_rows(url: URL) -> dict[str, int]:
    import asyncpg

    async def run() -> dict[str, int]:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=10)
        try:
            return await count_rows_async(conn)
        finally:
            await conn.close()

    return asyncio.run(run())
