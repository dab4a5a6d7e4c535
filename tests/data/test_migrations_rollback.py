"""Rollback: on a populated database (SQLite and PostgreSQL), migrations go down one step and up
again without losing a row of the tables the older revision keeps; base and back works."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from stalwart.data.migrate import current_revision, head_revision, migrate_to
from tests.conftest import make_settings
from tests.ops.helpers import scratch_postgres, seed

# What each revision adds; downgrading below it drops exactly these tables.
TABLES_BY_REVISION = {
    "0001": ("accounts", "tokens"),
    "0002": ("notes", "note_tags"),
    "0003": ("audit_events",),
}


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'rollback.db'}"
        return
    with scratch_postgres(migrate=False) as url:
        yield url


def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every app table present, sorted (the comparison is by content)."""

    async def run() -> dict[str, list[tuple[Any, ...]]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                present = await conn.run_sync(lambda sync: set(sync.dialect.get_table_names(sync)))
                out = {}
                for tables in TABLES_BY_REVISION.values():
                    for table in tables:
                        if table in present:
                            rows = (await conn.execute(text(f"SELECT * FROM {table}"))).all()
                            out[table] = sorted(tuple(str(v) for v in r) for r in rows)
                return out
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _populate(tmp_path: Path, url: str) -> None:
    settings = make_settings(tmp_path, database_url=url)
    asyncio.run(seed(settings, accounts=3, notes=4))


def test_downgrade_one_step_and_upgrade_keeps_every_kept_row(tmp_path: Path, empty_url: str) -> None:
    migrate_to(empty_url, "head")
    head = head_revision()
    assert current_revision(empty_url) == head
    _populate(tmp_path, empty_url)
    full = _snapshot(empty_url)
    assert all(full[t] for t in ("accounts", "tokens", "notes", "note_tags", "audit_events"))

    migrate_to(empty_url, "-1")
    previous = current_revision(empty_url)
    assert previous is not None
    assert previous < head
    dropped = TABLES_BY_REVISION[head]
    kept = {t: rows for t, rows in full.items() if t not in dropped}
    assert _snapshot(empty_url) == kept

    migrate_to(empty_url, "head")
    assert current_revision(empty_url) == head
    after = _snapshot(empty_url)
    assert {t: after[t] for t in kept} == kept
    assert all(after[t] == [] for t in dropped)  # what the downgrade dropped comes back empty


def test_every_revision_downgrades_and_base_round_trips(tmp_path: Path, empty_url: str) -> None:
    migrate_to(empty_url, "head")
    _populate(tmp_path, empty_url)
    full = _snapshot(empty_url)
    revisions = sorted(TABLES_BY_REVISION)
    for target in reversed(revisions[:-1]):
        migrate_to(empty_url, target)
        assert current_revision(empty_url) == target
        kept_tables = {t for r in revisions if r <= target for t in TABLES_BY_REVISION[r]}
        assert _snapshot(empty_url) == {t: full[t] for t in kept_tables}
    migrate_to(empty_url, "base")
    assert current_revision(empty_url) is None
    assert _snapshot(empty_url) == {}
    migrate_to(empty_url, "head")
    assert current_revision(empty_url) == head_revision()
    _populate(tmp_path, empty_url)  # the rebuilt schema takes writes again
    assert len(_snapshot(empty_url)["accounts"]) == 3


def test_every_revision_is_listed_here() -> None:
    """A new migration must say what it adds, so the tests above cover its downgrade."""
    assert max(TABLES_BY_REVISION) == head_revision()
