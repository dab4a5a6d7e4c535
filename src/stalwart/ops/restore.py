"""Verify and restore backup archives.

Every check runs before the live database is touched: archive checksum and layout, key,
decryption, data checksum, schema revision known to this release, backend, and (SQLite) the
restored file's integrity and row counts. A refused archive changes nothing.

Applying is atomic: SQLite through the online backup API in one step (one write
transaction on the target); PostgreSQL through `psql --single-transaction` running a prelude
that drops the current tables, the dump, and a check of every row count against the manifest.
Then the schema is migrated to head, the erasure ledger re-applied and every bearer token
revoked (a revocation made after the archive would otherwise be undone).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import secrets
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import func, select, update
from sqlalchemy.engine import URL, make_url

from stalwart.data.engine import Database
from stalwart.data.migrate import current_revision, head_revision, migrate_to
from stalwart.data.models import Account, Token
from stalwart.data.sqlite_file import prepare_sqlite_file
from stalwart.data.types import utcnow
from stalwart.ops import erasure_ledger, pg
from stalwart.ops.archive import (
    ArchiveError,
    Manifest,
    extract_data,
    passphrase_of,
    verify_archive_bytes,
)
from stalwart.ops.audit import record
from stalwart.ops.backup import record_verification, scratch_dir, sqlite_counts
from stalwart.ops.gdpr import erase_account
from stalwart.settings import Settings

__all__ = ["RestoreReport", "VerifyReport", "reapply_erasures", "restore_archive", "verify_archive"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    manifest: Manifest
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class RestoreReport:
    manifest: Manifest
    revision: str | None
    reapplied: int
    created_database: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    tokens_revoked: int = 0


def _check_revision(manifest: Manifest) -> None:
    if manifest.schema_revision is None:
        return
    config = Config()
    config.set_main_option("script_location", "stalwart.data:migrations")
    try:
        known = ScriptDirectory.from_config(config).get_revision(manifest.schema_revision)
    except CommandError:
        known = None
    if known is None:
        raise ArchiveError(
            f"archive schema revision {manifest.schema_revision} is newer than this release "
            f"(head {head_revision()}): restore it with the release that made it"
        )


def _compare(expected: dict[str, int], actual: dict[str, int]) -> None:
    if expected != actual:
        diffs = [
            f"{t} {actual.get(t, 'missing')}!={expected.get(t, 'none')}"
            for t in sorted(set(expected) | set(actual))
            if expected.get(t) != actual.get(t)
        ]
        raise ArchiveError(f"restored row counts differ from the manifest: {', '.join(diffs)}")


def _open_archive(settings: Settings, path: Path, work: Path) -> tuple[Manifest, Path]:
    """All the checks that need no database; the decrypted, decompressed data file."""
    if not path.is_file():
        raise ArchiveError(f"no such archive: {path}")
    manifest = verify_archive_bytes(path)
    _check_revision(manifest)
    data = work / "data"
    extract_data(path, manifest, passphrase_of(settings.backup_encryption_key), data)
    return manifest, data


def _check_sqlite_file(data: Path, manifest: Manifest) -> dict[str, int]:
    conn = sqlite3.connect(data)
    try:
        if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
            raise ArchiveError("archive is corrupt: the database file fails its integrity check")
        counts, _ = sqlite_counts(conn)
    except sqlite3.DatabaseError:
        raise ArchiveError("archive is corrupt: not a SQLite database") from None
    finally:
        conn.close()
    _compare(manifest.row_counts, counts)
    return counts


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _count_checks(manifest: Manifest) -> str:
    """A DO block that aborts the restore transaction when a table's count is off."""
    checks = "\n".join(
        f"  IF (SELECT count(*) FROM public.{pg.quote_ident(t)}) <> {int(n)} THEN "  # noqa: S608
        f"RAISE EXCEPTION 'row count of % differs from the manifest', {_literal(t)}; END IF;"
        for t, n in sorted(manifest.row_counts.items())
    )
    return f"DO $$ BEGIN\n{checks}\nEND $$;\n"


_DROP_TABLES = """DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
    EXECUTE format('DROP TABLE IF EXISTS public.%I CASCADE', r.tablename);
  END LOOP;
END $$;
"""


def _revoke_sql(revoked_at: datetime | None) -> str:
    if revoked_at is None:
        return ""
    # A datetime's own ISO text, quoted: psql scripts take no bound parameters.
    stamp = _literal(revoked_at.isoformat())
    revoke = f"UPDATE public.tokens SET revoked_at = {stamp}::timestamptz WHERE revoked_at IS NULL;"  # noqa: S608
    return f"DO $$ BEGIN IF to_regclass('public.tokens') IS NOT NULL THEN\n  {revoke}\nEND IF; END $$;\n"


def _load_postgres(
    url: URL, data: Path, manifest: Manifest, work: Path, revoked_at: datetime | None = None
) -> None:
    """Replace the database's tables with the dump, in one transaction (all or nothing).

    `revoked_at`: revoke every live bearer token in the same transaction (a restore)."""
    script = work / "restore.sql"
    pg.run_tool([pg.tool("pg_restore"), "--no-owner", "--no-privileges", f"--file={script}", str(data)])
    prelude = work / "prelude.sql"
    prelude.write_text(_DROP_TABLES)
    checks = work / "checks.sql"
    checks.write_text(_count_checks(manifest) + _revoke_sql(revoked_at))
    with pg.passfile(url) as pass_path:
        pg.run_tool(
            [
                pg.tool("psql"),
                "--no-psqlrc",
                "--quiet",
                "--set=ON_ERROR_STOP=1",
                "--single-transaction",
                f"--dbname={pg.conninfo(url, pass_path)}",
                f"--file={prelude}",
                f"--file={script}",
                f"--file={checks}",
            ]
        )


def _revoke_in_sqlite_copy(data: Path, revoked_at: datetime) -> None:
    conn = sqlite3.connect(data)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tokens'").fetchone():
            # Stored as SQLAlchemy stores UTCDateTime on SQLite: naive UTC, microseconds.
            stamp = revoked_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            conn.execute("UPDATE tokens SET revoked_at = ? WHERE revoked_at IS NULL", (stamp,))
            conn.commit()
    finally:
        conn.close()


def _apply_sqlite(target: Path, data: Path) -> None:
    if not target.exists():
        # A WAL left by a destroyed database must not be replayed onto the restored one.
        for suffix in ("-wal", "-shm", "-journal"):
            target.with_name(target.name + suffix).unlink(missing_ok=True)
    prepare_sqlite_file(str(target))
    src = sqlite3.connect(data)
    try:
        dst = sqlite3.connect(target, timeout=30)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _remember(settings: Settings, path: Path, ok: bool, detail: str) -> None:
    # Only for archives in the backup folder (the API lists them); a copy elsewhere is left alone.
    if path.resolve().parent == settings.effective_backup_dir.resolve():
        record_verification(path, ok, detail)


class _ScratchDatabases:
    """The scratch databases of PostgreSQL verifications still running in this process.

    The scheduler verifies in a daemon thread (background.run_in_daemon_thread), which a process
    that exits abandons mid-verification, `finally` included: without the drop at exit below,
    the scratch database (a full copy of the data) stayed on the server for good."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while one is created: none appears after the drop
        self.databases: dict[str, URL] = {}
        self.exiting = False

    def drop_at_exit(self) -> None:
        # Bounded: a database that stops answering must not keep the process from exiting.
        if not self.lock.acquire(timeout=_SCRATCH_DROP_SECONDS):
            return
        try:
            self.exiting = True
            left = list(self.databases.items())
            self.databases.clear()
        finally:
            self.lock.release()
        for name, url in left:
            with contextlib.suppress(Exception):
                pg.drop_database(url, name, timeout=_SCRATCH_DROP_SECONDS)


_SCRATCH_DROP_SECONDS = 5.0
_scratch = _ScratchDatabases()
atexit.register(_scratch.drop_at_exit)


def verify_archive(settings: Settings, path: Path) -> VerifyReport:
    """Checksum, decryptability, and a restore into a scratch database matching the manifest."""
    try:
        with scratch_dir(settings, "verify") as tmp:
            work = Path(tmp)
            manifest, data = _open_archive(settings, path, work)
            if manifest.backend == "sqlite":
                counts = _check_sqlite_file(data, manifest)
            else:
                counts = _verify_postgres(settings, data, manifest, work)
    except (ArchiveError, pg.PgToolError) as exc:
        _remember(settings, path, False, str(exc))
        raise
    _remember(settings, path, True, "row counts match the manifest")
    return VerifyReport(manifest, counts)


def _verify_postgres(settings: Settings, data: Path, manifest: Manifest, work: Path) -> dict[str, int]:
    url = make_url(settings.effective_database_url)
    if url.get_backend_name() != "postgresql":
        # Any reachable server will do for a scratch database; without one, stop here.
        raise ArchiveError("verifying a PostgreSQL archive needs STALWART_DATABASE_URL on PostgreSQL")
    scratch = f"{(url.database or 'stalwart')[:30]}_verify_{secrets.token_hex(4)}"
    with _scratch.lock:
        if _scratch.exiting:
            raise ArchiveError("the process is exiting")
        _scratch.databases[scratch] = url
        try:
            pg.create_database(url, scratch)
        except BaseException:
            del _scratch.databases[scratch]
            raise
    try:
        scratch_url = url.set(database=scratch)
        _load_postgres(scratch_url, data, manifest, work)
        counts = pg.count_rows(scratch_url)
    finally:
        pg.drop_database(url, scratch)
        with _scratch.lock:
            _scratch.databases.pop(scratch, None)
    _compare(manifest.row_counts, counts)
    return counts


async def reapply_erasures(settings: Settings, since: datetime | None = None) -> int:
    """Erase again every account of the ledger present in the database.

    By id, every entry (ids are random and never reused). By email hash, only the entries
    recorded after `since` (the archive's creation): an older entry may name an email its
    owner registered again, legitimately, after their erasure.
    """
    entries = erasure_ledger.read(settings)
    if not entries:
        return 0
    ids = {e.account_id for e in entries}
    hashes = {e.email_hash for e in entries if since is None or e.at >= since}
    db = Database(settings)
    await db.start()
    try:
        async with db.session() as session:
            rows = (await session.execute(select(Account.id, Account.email))).all()
        doomed = [
            account_id
            for account_id, email in rows
            if account_id in ids or erasure_ledger.email_hash(settings, email) in hashes
        ]
        for account_id in doomed:
            async with db.session() as session:
                await erase_account(
                    session,
                    settings,
                    account_id,
                    actor="restore",
                    reason="erasure re-applied after restore",
                    ledger=False,
                )
        return len(doomed)
    finally:
        await db.close()


async def _revoke_tokens_and_record(
    settings: Settings, manifest: Manifest, name: str, reapplied: int, revoked_at: datetime
) -> int:
    """Count the bearer tokens the restore revoked, and record the restore.

    A token revoked after the archive was made (a logout, a token the owner knew leaked) is
    live again in the archive, and nothing says which: all of them were revoked as the data
    was loaded (stamped `revoked_at`), and everyone signs in again. Returns how many.
    """
    db = Database(settings)
    await db.start()
    try:
        async with db.session() as session:
            # Nothing is left live after the load; this only makes sure of it.
            await session.execute(
                update(Token).where(Token.revoked_at.is_(None)).values(revoked_at=revoked_at)
            )
            count = int(
                await session.scalar(
                    select(func.count()).select_from(Token).where(Token.revoked_at == revoked_at)
                )
                or 0
            )
            record(
                session,
                "backup.restored",
                actor="cli",
                details={
                    "archive": name,
                    "created_at": manifest.created_at.isoformat(),
                    "erasures_reapplied": reapplied,
                    "tokens_revoked": count,
                },
            )
            await session.commit()
            return count
    finally:
        await db.close()


def restore_archive(settings: Settings, path: Path) -> RestoreReport:
    """Replace the configured database with the archive's, migrate to head, re-apply erasures,
    revoke every bearer token."""
    url = make_url(settings.effective_database_url)
    backend = url.get_backend_name()
    with scratch_dir(settings, "restore") as tmp:
        work = Path(tmp)
        manifest, data = _open_archive(settings, path, work)
        if manifest.backend != backend:
            raise ArchiveError(f"archive is a {manifest.backend} backup; this deployment uses {backend}")
        created = False
        # Every token the archive brings back is revoked with the data it arrives in: there
        # is no moment when the restored database holds a live token.
        revoked_at = utcnow()
        if backend == "sqlite":
            counts = _check_sqlite_file(data, manifest)
            _revoke_in_sqlite_copy(data, revoked_at)
            _apply_sqlite(Path(str(url.database)), data)
        else:
            created = pg.ensure_database(url)
            _load_postgres(url, data, manifest, work, revoked_at)
            counts = dict(manifest.row_counts)
    migrate_to(settings.effective_database_url, "head")
    reapplied = asyncio.run(reapply_erasures(settings, since=manifest.created_at))
    revoked = asyncio.run(_revoke_tokens_and_record(settings, manifest, path.name, reapplied, revoked_at))
    return RestoreReport(
        manifest, current_revision(settings.effective_database_url), reapplied, created, counts, revoked
    )
