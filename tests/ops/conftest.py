"""Fixtures for the data-lifecycle tests: a fresh database of its own per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from stalwart.settings import Settings
from tests.conftest import make_settings
from tests.ops.helpers import scratch_postgres


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated PostgreSQL database to copy (CREATE DATABASE ... TEMPLATE), one per worker."""
    with scratch_postgres() as url:
        yield url.rsplit("/", 1)[1]


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A migrated, empty database this test may destroy and restore."""
    if request.param == "sqlite":
        target = tmp_path / "data" / "stalwart.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sqlite_template, target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    with scratch_postgres(template=request.getfixturevalue("pg_template")) as url:
        yield url


@pytest.fixture
def ops_settings(tmp_path: Path, fresh_url: str) -> Settings:
    return make_settings(tmp_path, database_url=fresh_url)
