"""Schema migrations (Alembic) run programmatically: upgrade, downgrade, current revision."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from stalwart.data.sqlite_file import prepare_sqlite_file

__all__ = ["current_revision", "head_revision", "migrate_to"]


def _config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "stalwart.data:migrations")
    config.attributes["url"] = url
    return config


def migrate_to(url: str, revision: str = "head") -> None:
    """Upgrade (or downgrade) the schema at `url` to `revision`."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        prepare_sqlite_file(parsed.database)
    config = _config(url)
    current = current_revision(url)
    script = ScriptDirectory.from_config(config)
    if revision in ("base", "-1") or _is_older(script, revision, current):
        command.downgrade(config, revision)
    else:
        command.upgrade(config, revision)


def _is_older(script: ScriptDirectory, target: str, current: str | None) -> bool:
    if current is None or target == "head":
        return False
    if target == current:
        return False
    # target is an ancestor of current: walking down from current reaches it.
    return any(rev.revision == target for rev in script.iterate_revisions(current, "base"))


def head_revision() -> str:
    script = ScriptDirectory.from_config(_config(""))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    async def read() -> str | None:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: MigrationContext.configure(sync).get_current_revision()
                )
        finally:
            await engine.dispose()

    return asyncio.run(read())

