"""Backup and restore on SQLite and PostgreSQL: consistent under writes, disaster recovery,
refusal of damaged, wrongly keyed, newer-schema or foreign archives (nothing touched)."""

from __future__ import annotations

import asyncio
import tarfile
import tempfile
import time
from pathlib import Path

import anyio.to_thread
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from stalwart.cli import app as cli_app
from stalwart.data.engine import Database
from stalwart.data.models import AuditEvent, Note, Token
from stalwart.data.types import utcnow
from stalwart.ops.archive import ArchiveError, Manifest, extract_data, write_archive
from stalwart.ops.backup import create_backup, list_archives
from stalwart.ops.restore import restore_archive, verify_archive
from stalwart.settings import Settings
from tests.conftest import make_settings
from tests.ops.helpers import count_tables, destroy_database, seed

KEY = "backup-key-for-tests-0123456789abcdef"


async def _writer(settings: Settings, account_id: str, stop: asyncio.Event, log: list[float]) -> None:
    """Insert notes one by one until told to stop; log the time of each commit."""
    db = Database(settings)
    await db.start()
    try:
        for i in range(100_000):
            if stop.is_set():
                return
            async with db.session() as session:
                session.add(Note(account_id=account_id, title=f"live {i}", body="y" * 200, tags=[]))
                await session.commit()
            log.append(time.monotonic())
            await asyncio.sleep(0)
    finally:
        await db.close()


def _bump_audit(counts: dict[str, int]) -> dict[str, int]:
    """Restore adds one `backup.restored` audit event after loading the archive."""
    return {**counts, "audit_events": counts["audit_events"] + 1}


@pytest.mark.anyio
async def test_backup_during_writes_then_disaster_then_restore(ops_settings: Settings, tmp_path: Path) -> None:
    """Encrypted here; the plain format goes through the same code (see the refusal tests)."""
    key = KEY
    settings = make_settings(tmp_path, database_url=ops_settings.database_url, backup_encryption_key=key)
    ids = await seed(settings, accounts=3, notes=200)
    stop = asyncio.Event()
    commits: list[float] = []
    writer = asyncio.create_task(_writer(settings, ids[0], stop, commits))
    while len(commits) < 5:  # the writer is up and committing
        await asyncio.sleep(0.01)
    started = time.monotonic()
    result = await create_backup(settings)
    finished = time.monotonic()
    done_at = len(commits)
    while len(commits) < done_at + 3:  # a few more writes after the backup, for the count below
        await asyncio.sleep(0.01)
    stop.set()
    await writer
    assert any(started < t < finished for t in commits), "no write landed during the backup"
    manifest = result.manifest
    assert manifest.backend == ("sqlite" if "sqlite" in settings.database_url else "postgresql")
    assert manifest.schema_revision == "0003"
    assert manifest.row_counts["accounts"] == 3
    assert manifest.row_counts["notes"] >= 600 + 5
    assert manifest.encryption is not None
    live = await count_tables(settings)
    assert live["notes"] > manifest.row_counts["notes"], "writes continued after the snapshot"

    report = await anyio.to_thread.run_sync(verify_archive, settings, result.path)
    assert report.counts == manifest.row_counts

    await anyio.to_thread.run_sync(destroy_database, settings.effective_database_url)
    restored = await anyio.to_thread.run_sync(restore_archive, settings, result.path)
    assert restored.revision == "0003"
    assert restored.reapplied == 0
    assert await count_tables(settings) == _bump_audit(manifest.row_counts)


@pytest.mark.anyio
async def test_one_corrupt_byte_is_refused_and_the_database_is_untouched(
    ops_settings: Settings,
) -> None:
    await seed(ops_settings, accounts=2, notes=20)
    result = await create_backup(ops_settings)
    await seed(ops_settings, accounts=1, notes=5)  # the database moves on after the backup
    before = await count_tables(ops_settings)
    raw = bytearray(result.path.read_bytes())
    with tarfile.open(result.path) as tar:
        data = tar.getmember(result.manifest.data.name)
    raw[data.offset_data + data.size // 2] ^= 0x40
    result.path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=r"^archive is corrupt: checksum mismatch$"):
        await anyio.to_thread.run_sync(restore_archive, ops_settings, result.path)
    with pytest.raises(ArchiveError):
        await anyio.to_thread.run_sync(verify_archive, ops_settings, result.path)
    assert await count_tables(ops_settings) == before
    assert list_archives(ops_settings)[0].verified is False


@pytest.mark.anyio
async def test_truncated_archive_is_refused(ops_settings: Settings) -> None:
    await seed(ops_settings, accounts=1, notes=3)
    result = await create_backup(ops_settings)
    before = await count_tables(ops_settings)
    raw = result.path.read_bytes()
    result.path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArchiveError, match="truncated"):
        await anyio.to_thread.run_sync(restore_archive, ops_settings, result.path)
    assert await count_tables(ops_settings) == before


@pytest.mark.anyio
async def test_wrong_key_is_refused_and_the_database_is_untouched(ops_settings: Settings, tmp_path: Path) -> None:
    url = ops_settings.database_url
    settings = make_settings(tmp_path, database_url=url, backup_encryption_key=KEY)
    await seed(settings, accounts=1, notes=3)
    result = await create_backup(settings)
    await seed(settings, accounts=1, notes=1)
    before = await count_tables(settings)
    wrong = make_settings(tmp_path, database_url=url, backup_encryption_key="not-the-key-" * 4)
    with pytest.raises(ArchiveError, match=r"^wrong encryption key for this archive"):
        await anyio.to_thread.run_sync(restore_archive, wrong, result.path)
    no_key = make_settings(tmp_path, database_url=url)
    with pytest.raises(ArchiveError, match=r"^archive is encrypted and STALWART_BACKUP_ENCRYPTION_KEY"):
        await anyio.to_thread.run_sync(restore_archive, no_key, result.path)
    assert await count_tables(settings) == before


@pytest.mark.anyio
async def test_newer_schema_archive_is_refused(ops_settings: Settings, tmp_path: Path) -> None:
    result = await create_backup(ops_settings)
    before = await count_tables(ops_settings)
    work = tmp_path / "forge"
    work.mkdir()
    extract_data(result.path, result.manifest, None, work / "data")
    future = Manifest.model_validate({**result.manifest.model_dump(), "schema_revision": "0099"})
    forged = ops_settings.effective_backup_dir / "future.tar"
    write_archive(forged, future, work / "data", None, work)
    with pytest.raises(ArchiveError, match=r"^archive schema revision 0099 is newer than this release"):
        await anyio.to_thread.run_sync(restore_archive, ops_settings, forged)
    assert await count_tables(ops_settings) == before


def test_rotation_keeps_the_newest(tmp_path: Path, sqlite_template: Path) -> None:
    import shutil

    db = tmp_path / "data" / "stalwart.db"
    db.parent.mkdir(parents=True)
    shutil.copy(sqlite_template, db)
    settings = make_settings(tmp_path, database_url=f"sqlite+aiosqlite:///{db}", backup_keep=2)
    made = [asyncio.run(create_backup(settings)).path.name for _ in range(4)]
    assert [a.name for a in list_archives(settings)] == made[:1:-1]
    folder = settings.effective_backup_dir
    assert folder.stat().st_mode & 0o777 == 0o700


def test_cli_backup_prints_the_path_last_and_restore_refuses_in_one_line(tmp_path: Path, sqlite_template: Path) -> None:
    import shutil

    db = tmp_path / "stalwart.db"
    shutil.copy(sqlite_template, db)
    env = {"STALWART_ENV": "test", "STALWART_DATA_DIR": str(tmp_path), "STALWART_BACKUP_ENCRYPTION_KEY": KEY}
    runner = CliRunner()
    result = runner.invoke(cli_app, ["backup"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    archive = Path(lines[-1])
    assert archive.is_file()
    assert archive.parent == tmp_path / "backups"
    assert "verified: restored into a scratch database, row counts match the manifest" in lines
    assert "encrypted: yes (AES-256-GCM)" in lines

    result = runner.invoke(cli_app, ["backup", "verify", str(archive)], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("archive ok: sqlite backup of ")

    raw = bytearray(archive.read_bytes())
    raw[700] ^= 0x01
    archive.write_bytes(bytes(raw))
    mtime = db.stat().st_mtime_ns
    result = runner.invoke(cli_app, ["restore", "--yes", str(archive)], env=env)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: archive refused: archive is corrupt: checksum mismatch\n"
    assert db.stat().st_mtime_ns == mtime


def test_restore_refuses_an_archive_of_the_other_backend(tmp_path: Path) -> None:
    from tests.ops.helpers import scratch_postgres

    with scratch_postgres() as url:
        pg_settings = make_settings(tmp_path / "pg", database_url=url)
        result = asyncio.run(create_backup(pg_settings))
    sqlite_settings = make_settings(tmp_path / "lite")
    with pytest.raises(ArchiveError, match=r"^archive is a postgresql backup; this deployment uses"):
        restore_archive(sqlite_settings, result.path)
    assert not (tmp_path / "lite" / "data" / "stalwart.db").exists()


@pytest.mark.anyio
async def test_created_at_precedes_the_snapshot(ops_settings: Settings) -> None:
    before = utcnow()
    result = await create_backup(ops_settings)
    assert before <= result.manifest.created_at <= utcnow()


@pytest.mark.anyio
async def test_restore_revokes_every_token_so_no_logout_is_undone(ops_settings: Settings) -> None:
    """A token revoked after the backup is live in the archive: restore revokes them all."""
    await seed(ops_settings, accounts=3, notes=2)
    result = await create_backup(ops_settings)
    db = Database(ops_settings)
    await db.start()
    try:
        async with db.session() as session:
            token_ids = list((await session.execute(select(Token.id))).scalars())
            assert len(token_ids) == 3
            # One owner logs out after the backup.
            await session.execute(update(Token).where(Token.id == token_ids[0]).values(revoked_at=utcnow()))
            await session.commit()
    finally:
        await db.close()

    restored = await anyio.to_thread.run_sync(restore_archive, ops_settings, result.path)

    assert restored.tokens_revoked == 3
    db = Database(ops_settings)
    await db.start()
    try:
        async with db.session() as session:
            live = (await session.execute(select(Token.id).where(Token.revoked_at.is_(None)))).all()
            assert live == []
            for token_hash in (await session.execute(select(Token.token_hash))).scalars():
                assert await db.reads.principal(token_hash) is None
            details = (
                await session.execute(select(AuditEvent.details).where(AuditEvent.event == "backup.restored"))
            ).scalar_one()
            assert details["tokens_revoked"] == 3
    finally:
        await db.close()


@pytest.mark.anyio
async def test_no_restored_token_is_live_even_before_the_restore_finishes(
    ops_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The revocation arrives with the data (SQLite: in the copy applied in one step;
    PostgreSQL: in the load's transaction), not in a later step a request could beat."""
    from stalwart.ops import restore

    await seed(ops_settings, accounts=2, notes=1)
    result = await create_backup(ops_settings)
    live_when_loaded: list[int] = []
    original = restore.reapply_erasures

    async def right_after_the_load(settings: Settings, since: object = None) -> int:
        db = Database(settings)
        await db.start()
        try:
            async with db.session() as session:
                live = (await session.execute(select(Token.id).where(Token.revoked_at.is_(None)))).all()
                live_when_loaded.append(len(live))
        finally:
            await db.close()
        return await original(settings, since)  # type: ignore[arg-type]

    monkeypatch.setattr(restore, "reapply_erasures", right_after_the_load)
    restored = await anyio.to_thread.run_sync(restore_archive, ops_settings, result.path)
    assert live_when_loaded == [0]
    assert restored.tokens_revoked == 2


@pytest.mark.anyio
async def test_verify_and_restore_work_beside_the_archives_not_in_the_system_temp_folder(
    ops_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decrypted archive is as large as the database: it must not need a big /tmp (deploy/k8s
    mounts 64 MiB of memory there). Here the system temp folder does not exist at all."""
    settings = make_settings(tmp_path, database_url=ops_settings.database_url, backup_encryption_key=KEY)
    await seed(settings, accounts=2, notes=20)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-system-temp-folder"))
    result = await create_backup(settings)
    report = await anyio.to_thread.run_sync(verify_archive, settings, result.path)
    assert report.counts == result.manifest.row_counts
    restored = await anyio.to_thread.run_sync(restore_archive, settings, result.path)
    assert restored.revision == "0003"
    assert await count_tables(settings) == _bump_audit(result.manifest.row_counts)
    left = sorted(p.name for p in settings.effective_backup_dir.iterdir())
    assert left == [result.path.name, f"{result.path.name}.verified.json"]  # no scratch folder left
    assert not (tmp_path / "no-system-temp-folder").exists()
