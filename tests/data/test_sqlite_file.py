"""data/sqlite_file.py: the SQLite database, its WAL and its folder are private to the owner."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from stalwart.data.engine import Database
from stalwart.data.migrate import migrate_to
from stalwart.data.sqlite_file import prepare_sqlite_file
from tests.conftest import make_settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> object:
    """The usual umask (0022): what SQLite alone would create is world-readable."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_migrate_creates_a_private_database_in_a_private_folder(tmp_path: Path) -> None:
    db = tmp_path / "new" / "stalwart.db"
    migrate_to(f"sqlite+aiosqlite:///{db}")
    assert _mode(db) == 0o600
    assert _mode(db.parent) == 0o700


def test_the_service_writes_through_private_wal_files(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'data' / 's.db'}")

    async def write() -> list[Path]:
        database = Database(settings)
        await database.start()
        try:
            async with database.session() as session:
                await session.execute(text("CREATE TABLE t (x INTEGER)"))
                await session.execute(text("INSERT INTO t VALUES (1)"))
                await session.commit()
                # The database and, while a connection is open, its -wal and -shm files.
                return {f.name: _mode(f) for f in (tmp_path / "data").iterdir()}
        finally:
            await database.close()

    modes = asyncio.run(write())
    assert "s.db" in modes
    assert modes == dict.fromkeys(modes, 0o600)


def test_an_existing_readable_database_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    prepare_sqlite_file(str(db))
    assert _mode(db) == 0o600


@pytest.mark.parametrize("database", [None, "", ":memory:"])
def test_nothing_to_do_without_a_file(database: str | None) -> None:
    prepare_sqlite_file(database)


def test_journal_files_left_readable_are_tightened(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    for name in ("old.db", "old.db-wal", "old.db-shm"):
        (tmp_path / name).write_bytes(b"")
        (tmp_path / name).chmod(0o644)
    prepare_sqlite_file(str(db))
    modes = {f.name: _mode(f) for f in tmp_path.iterdir()}
    assert modes == dict.fromkeys(("old.db", "old.db-wal", "old.db-shm"), 0o600)


def test_a_database_another_user_owns_is_left_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Shared through its group on purpose; a chmod would fail (not its owner) and stop the start.
    db = tmp_path / "shared.db"
    db.write_bytes(b"")
    db.chmod(0o660)
    monkeypatch.setattr(os, "geteuid", lambda: db.stat().st_uid + 1)
    prepare_sqlite_file(str(db))
    assert _mode(db) == 0o660
