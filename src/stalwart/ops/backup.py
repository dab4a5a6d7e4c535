"""Online backups: a consistent snapshot of the live database, archived (see ops/archive.py).

* SQLite: the online backup API (`sqlite3.Connection.backup`) in one step, which copies a
  single consistent snapshot while writers carry on (WAL mode).
* PostgreSQL: a REPEATABLE READ transaction exports its snapshot; the row counts are read in
  it and `pg_dump -Fc --snapshot` dumps exactly that snapshot, so the manifest's counts are
  the dump's counts even under concurrent writes.

Archives go to `settings.effective_backup_dir` (0700), named by creation time, 0600 each;
rotation keeps the newest `backup_keep`. A `NAME.verified.json` file next to an archive
records its last verification.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio.to_thread
import orjson
from sqlalchemy.engine import URL, make_url

from stalwart import __version__
from stalwart.data.types import utcnow
from stalwart.ops import pg
from stalwart.ops.archive import (
    ArchiveError,
    DataInfo,
    Manifest,
    new_encryption,
    passphrase_of,
    read_manifest,
    write_archive,
)
from stalwart.settings import Settings

__all__ = [
    "ARCHIVE_NAME",
    "ArchiveInfo",
    "BackupError",
    "BackupResult",
    "create_backup",
    "expired_archives",
    "list_archives",
    "record_verification",
    "remove_archive",
    "rotate",
    "sqlite_counts",
]

ARCHIVE_NAME = re.compile(r"^stalwart-(\d{8}T\d{12}Z)-[0-9a-f]{6}\.tar$")
_VERIFIED_SUFFIX = ".verified.json"


class BackupError(Exception):
    """The backup could not be made; the message is one line."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    manifest: Manifest


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    name: str
    path: Path
    size: int
    created_at: datetime
    manifest: Manifest | None
    verified: bool | None
    verified_at: datetime | None


def sqlite_counts(conn: sqlite3.Connection) -> tuple[dict[str, int], str | None]:
    """Row counts per table and the Alembic revision of an open SQLite database."""
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    counts = {
        # Names come from sqlite_master and are quoted: no user input reaches this SQL.
        t: int(conn.execute(f"SELECT count(*) FROM {pg.quote_ident(t)}").fetchone()[0])  # noqa: S608
        for t in tables
    }
    revision = None
    if "alembic_version" in counts:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    return counts, revision


def _dump_sqlite(source: Path, dest: Path) -> tuple[dict[str, int], str | None]:
    if not source.exists():
        raise BackupError(f"no SQLite database at {source}")
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(dest)
        try:
            # pages=-1: one step, one snapshot; a stepwise copy restarts on every write.
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            return sqlite_counts(dst)
        finally:
            dst.close()
    finally:
        src.close()


async def _dump_postgres(url: URL, dest: Path) -> tuple[dict[str, int], str | None]:
    import asyncpg

    pg_dump = pg.tool("pg_dump")
    conn = await asyncpg.connect(pg.asyncpg_dsn(url), timeout=30)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_export_snapshot()")
            counts = await pg.count_rows_async(conn)
            revision = None
            if "alembic_version" in counts:
                revision = await conn.fetchval("SELECT version_num FROM alembic_version")
            with pg.passfile(url) as pass_path:
                args = [
                    pg_dump,
                    "--format=custom",
                    "--compress=0",
                    "--no-owner",
                    "--no-privileges",
                    f"--snapshot={snapshot}",
                    f"--file={dest}",
                    f"--dbname={pg.conninfo(url, pass_path)}",
                ]
                proc = await asyncio.create_subprocess_exec(
                    *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
                )
                try:
                    _, stderr = await proc.communicate()
                finally:
                    if proc.returncode is None:  # cancelled: do not leave pg_dump behind
                        proc.kill()
                        await proc.wait()
                if proc.returncode != 0:
                    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
                    raise BackupError(f"pg_dump failed: {lines[-1] if lines else proc.returncode}")
            return counts, revision
    finally:
        await conn.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def backup_dir(settings: Settings) -> Path:
    path = settings.effective_backup_dir
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def scratch_dir(settings: Settings, purpose: str) -> tempfile.TemporaryDirectory[str]:
    """A private working folder beside the archives, removed after use.

    Not the system's temporary folder: it holds a whole database, decrypted for a verification or
    a restore, and may be small (deploy/k8s mounts 64 MiB of memory on /tmp); the backup folder
    is on storage sized for archives, private to the service (0700)."""
    return tempfile.TemporaryDirectory(dir=backup_dir(settings), prefix=f".tmp-{purpose}-")


async def create_backup(settings: Settings) -> BackupResult:
    """Make one archive of the configured database; rotate; return its path and manifest."""
    url = make_url(settings.effective_database_url)
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise BackupError(f"backups support SQLite and PostgreSQL, not {backend}")
    folder = backup_dir(settings)
    # Before the snapshot: an erasure logged after this instant may be missing from the archive.
    created_at = utcnow()
    name = f"stalwart-{created_at:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}.tar"
    with scratch_dir(settings, "backup") as tmp:
        work = Path(tmp)
        data = work / "data"
        if backend == "sqlite":
            counts, revision = await anyio.to_thread.run_sync(_dump_sqlite, Path(str(url.database)), data)
        else:
            counts, revision = await _dump_postgres(url, data)
        passphrase = passphrase_of(settings.backup_encryption_key)
        encryption, key = (None, None)
        if passphrase is not None:
            encryption, key = await anyio.to_thread.run_sync(new_encryption, passphrase)
        info = DataInfo(
            name="data.zst.enc" if key is not None else "data.zst",
            sha256=await anyio.to_thread.run_sync(_sha256, data),
            size=data.stat().st_size,
        )
        manifest = Manifest(
            created_at=created_at,
            app_version=__version__,
            backend="sqlite" if backend == "sqlite" else "postgresql",
            schema_revision=revision,
            row_counts=counts,
            data=info,
            encryption=encryption,
        )
        dest = folder / name
        await anyio.to_thread.run_sync(write_archive, dest, manifest, data, key, work)
    rotate(settings)
    return BackupResult(dest, manifest)


def _created_from_name(name: str) -> datetime | None:
    match = ARCHIVE_NAME.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


def _archives(settings: Settings) -> list[Path]:
    """Archive files, newest first (names sort by creation time)."""
    folder = settings.effective_backup_dir
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if ARCHIVE_NAME.match(p.name)), reverse=True)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _VERIFIED_SUFFIX)


def record_verification(path: Path, ok: bool, detail: str) -> None:
    """Remember the outcome of `backup verify` next to the archive (best effort)."""
    with contextlib.suppress(OSError):
        _sidecar(path).write_bytes(orjson.dumps({"ok": ok, "verified_at": utcnow().isoformat(), "detail": detail}))
        _sidecar(path).chmod(0o600)


def _verification(path: Path) -> tuple[bool | None, datetime | None]:
    try:
        data = orjson.loads(_sidecar(path).read_bytes())
        return bool(data["ok"]), datetime.fromisoformat(data["verified_at"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None, None


def list_archives(settings: Settings) -> list[ArchiveInfo]:
    infos: list[ArchiveInfo] = []
    for path in _archives(settings):
        try:
            manifest: Manifest | None = read_manifest(path)
            size = path.stat().st_size
        except (ArchiveError, OSError):
            manifest = None
            size = path.stat().st_size if path.exists() else 0
        created = manifest.created_at if manifest else _created_from_name(path.name)
        verified, verified_at = _verification(path)
        infos.append(ArchiveInfo(path.name, path, size, created or utcnow(), manifest, verified, verified_at))
    return infos


def remove_archive(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    _sidecar(path).unlink(missing_ok=True)
    return True


def rotate(settings: Settings) -> list[Path]:
    """Delete all but the newest `backup_keep` archives; return the deleted paths."""
    doomed = _archives(settings)[settings.backup_keep :]
    return [p for p in doomed if remove_archive(p)]


def expired_archives(settings: Settings, now: datetime) -> list[Path]:
    """Archives older than retention_backups_days, never the newest one."""
    if settings.retention_backups_days <= 0:
        return []
    cutoff = now - timedelta(days=settings.retention_backups_days)
    out = []
    for path in _archives(settings)[1:]:
        created = _created_from_name(path.name)
        if created is not None and created < cutoff:
            out.append(path)
    return out
