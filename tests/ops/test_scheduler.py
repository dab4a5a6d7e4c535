"""Scheduled jobs with two service instances sharing a database: only one runs each job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from stalwart.app import create_app
from stalwart.data.engine import Database
from stalwart.data.models import Account, AuditEvent, Note
from stalwart.data.types import utcnow
from stalwart.ops.backup import list_archives
from stalwart.ops.scheduler import Lifecycle
from stalwart.settings import Settings
from tests.conftest import PG_ADMIN_DSN, REDIS_URL, PostgresDatabase, make_settings
from tests.ops.helpers import at

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def _instances(settings: Settings, count: int = 2) -> AsyncIterator[list[FastAPI]]:
    """`count` app objects on the same settings (same database, Redis, data_dir), all started."""
    apps = [create_app(settings) for _ in range(count)]
    async with contextlib.AsyncExitStack() as stack:
        for application in apps:
            await stack.enter_async_context(application.router.lifespan_context(application))
        yield apps


def _lifecycle(application: FastAPI) -> Lifecycle:
    lifecycle = application.state.resources.lifecycle
    assert isinstance(lifecycle, Lifecycle)
    return lifecycle


@pytest.fixture(params=["postgres", "redis", "file"])
def shared_settings(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Settings:
    if request.param == "postgres":

        pg: PostgresDatabase = request.getfixturevalue("postgres_db")
        pg.truncate()
        return make_settings(tmp_path, database_url=pg.url, purge_interval_hours=0)
    import shutil

    db = tmp_path / "data" / "stalwart.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sqlite_template, db)
    url = f"sqlite+aiosqlite:///{db}"
    if request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        return make_settings(
            tmp_path,
            database_url=url,
            purge_interval_hours=0,
            redis_url=REDIS_URL,
            scheduler_lock="redis",
            scheduler_lock_prefix=prefix,
        )
    return make_settings(tmp_path, database_url=url, purge_interval_hours=0)


async def test_two_instances_never_run_a_job_at_the_same_time(shared_settings: Settings) -> None:
    running = 0
    peak = 0
    runs: list[int] = []

    def slow_job(index: int) -> Any:
        async def job(actor: str) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            runs.append(index)
            await asyncio.sleep(0.5)
            running -= 1

        return job

    async with _instances(shared_settings) as apps:
        lifecycles = [_lifecycle(a) for a in apps]
        for i, lc in enumerate(lifecycles):
            lc.jobs["purge"] = slow_job(i)
        outcomes = await asyncio.gather(*(lc.run_job("purge", actor="t") for lc in lifecycles))
        assert sorted(outcomes) == ["busy", "ran"]
        assert len(runs) == 1
        assert peak == 1
        # The lock is free again once the job is done: the other instance may run it now.
        loser = lifecycles[outcomes.index("busy")]
        assert await loser.run_job("purge", actor="t") == "ran"
        assert len(runs) == 2


async def _events(settings: Settings, event: str) -> list[AuditEvent]:
    db = Database(settings)
    await db.start()
    try:
        async with db.session() as s:
            return list((await s.scalars(select(AuditEvent).where(AuditEvent.event == event))).all())
    finally:
        await db.close()


async def _old_trashed_note(settings: Settings) -> str:
    db = Database(settings)
    await db.start()
    try:
        async with db.session() as s:
            owner = Account(email="o@example.com", password_hash="h", display_name="o", last_login_at=utcnow())
            s.add(owner)
            await s.flush()
            note = Note(account_id=owner.id, title="old", deleted_at=at(days_ago=90))
            s.add(note)
            await s.commit()
            return note.id
    finally:
        await db.close()


async def test_scheduled_purge_and_backup_run_once_across_two_instances(fresh_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        database_url=fresh_url,
        purge_interval_hours=1,
        backup_interval_hours=1,
        scheduler_start_delay_seconds=0,
    )
    note_id = await _old_trashed_note(settings)
    async with _instances(settings):
        for _ in range(600):  # bounded: 60 s
            purged = await _events(settings, "retention.purged")
            backed = await _events(settings, "backup.created")
            if purged and backed:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a second run, if any, would land now
        purged = await _events(settings, "retention.purged")
        backed = await _events(settings, "backup.created")
    assert len(purged) == 1
    assert purged[0].actor == "scheduler"
    assert purged[0].details["trashed_notes"] == 1
    assert len(backed) == 1
    assert backed[0].details["verified"] is True
    archives = list_archives(settings)
    assert len(archives) == 1
    assert archives[0].verified is True
    db = Database(settings)
    await db.start()
    try:
        async with db.session() as s:
            assert await s.get(Note, note_id) is None
    finally:
        await db.close()


async def test_no_loops_when_intervals_are_zero(tmp_path: Path, sqlite_template: Path) -> None:
    settings = make_settings(tmp_path, purge_interval_hours=0, backup_interval_hours=0)
    async with _instances(settings, count=1) as (application,):
        assert _lifecycle(application).loops == []
    settings = make_settings(tmp_path)  # defaults: purge daily, first run after 5 minutes
    assert settings.purge_interval_hours == 24
    assert settings.scheduler_start_delay_seconds == 300
    async with _instances(settings, count=1) as (application,):
        assert [t.get_name() for t in _lifecycle(application).loops] == ["lifecycle:purge"]


async def test_a_failed_verification_is_logged_without_the_tools_message(
    tmp_path: Path, fresh_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A PostgreSQL tool's message quotes SQL and row data: the log line names the error type
    and the archive; the reason stays with the archive."""
    from stalwart.ops import scheduler
    from stalwart.ops.pg import PgToolError

    def failing_verify(settings: Settings, path: Path) -> None:
        raise PgToolError('psql: ERROR: CONTEXT: COPY accounts, line 1: "secret-row@example.com"')

    monkeypatch.setattr(scheduler, "verify_archive", failing_verify)
    settings = make_settings(tmp_path, database_url=fresh_url, purge_interval_hours=0, backup_interval_hours=0)
    async with _instances(settings, count=1) as (application,):
        with caplog.at_level(logging.ERROR, logger="stalwart.ops"):
            await _lifecycle(application)._backup("test")
    (record,) = [r for r in caplog.records if r.name == "stalwart.ops"]
    assert record.getMessage() == "backup verification failed: PgToolError"
    assert record.__dict__["backup.archive"] == list_archives(settings)[0].name
    assert "secret-row" not in caplog.text


# A process that starts a backup, waits until the verification reached `reached` (an event the
# patch sets), then closes its lifespan and exits: what a SIGTERM at that moment comes down to.
_EXIT_DURING_VERIFY_SCRIPT = """
import asyncio, sys, threading
from pathlib import Path
from stalwart.app import create_app
from stalwart.settings import Settings

reached = threading.Event()
{patch}

async def main():
    settings = Settings(_env_file=None, env="test", data_dir=Path(sys.argv[1]),
                        database_url=sys.argv[2], argon2_time_cost=1, argon2_memory_kib=64,
                        argon2_parallelism=1, rate_limit_backend="memory")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert await app.state.resources.lifecycle.start_backup(actor="test")
        while not reached.is_set():
            await asyncio.sleep(0.05)
    print("lifespan closed", flush=True)

asyncio.run(main())
"""


def _exit_during_verify(patch: str, data_dir: Path, database_url: str, timeout: float) -> None:
    """Run that process; fail unless it exits by itself, with status 0, after its lifespan."""
    import subprocess
    import sys

    script = _EXIT_DURING_VERIFY_SCRIPT.format(patch=patch)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir), database_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the process did not exit; it printed {out!r}")
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"lifespan closed" in out


def test_the_process_exits_while_a_backup_verification_is_blocked(tmp_path: Path, sqlite_template: Path) -> None:
    """SIGTERM during a backup's verification against a database that stopped answering: the
    graceful shutdown finished, but the process then waited for the verification thread at
    exit, for as long as the database stayed stalled."""
    import shutil

    database = tmp_path / "data" / "stalwart.db"
    database.parent.mkdir(parents=True)
    shutil.copy(sqlite_template, database)
    patch = """
import stalwart.ops.scheduler as scheduler

def verify_on_a_stalled_database(settings, path):
    reached.set()
    threading.Event().wait()  # a scratch-database call to a server that never answers

scheduler.verify_archive = verify_on_a_stalled_database
"""
    _exit_during_verify(patch, tmp_path / "data", f"sqlite+aiosqlite:///{database}", timeout=30)


def test_a_verification_abandoned_at_exit_leaves_no_scratch_database(
    tmp_path: Path, postgres_db: PostgresDatabase
) -> None:
    """SIGTERM while a backup's verification loads the dump into its scratch database: the
    process exits without the verification thread (background.run_in_daemon_thread), so its own
    `finally` never dropped the scratch database; a full copy of the data stayed on the server,
    one more with every such restart."""
    import asyncpg

    prefix = f"{postgres_db.name[:30]}_verify_"

    async def scratch_databases() -> list[str]:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            rows = await conn.fetch("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix)
        finally:
            await conn.close()
        return [row["datname"] for row in rows]

    assert asyncio.run(scratch_databases()) == []
    patch = """
import stalwart.ops.restore as restore

real_load = restore._load_postgres

def load_a_large_dump(*args, **kwargs):
    reached.set()
    threading.Event().wait(3)  # a big dump takes a while to load into the scratch database
    return real_load(*args, **kwargs)

restore._load_postgres = load_a_large_dump
"""
    _exit_during_verify(patch, tmp_path / "data", postgres_db.url, timeout=60)
    left = asyncio.run(scratch_databases())
    if left:  # not to leave them to the next runs either
        for name in left:
            asyncio.run(_drop(name))
    assert left == []


async def _drop(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
