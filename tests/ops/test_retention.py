"""Retention purge: each kind of data goes when its period is over, not a day before."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import anyio.to_thread
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from stalwart.cli import app as cli_app
from stalwart.data.engine import Database
from stalwart.data.migrate import migrate_to
from stalwart.data.models import Account, AuditEvent, Note, NoteTag, Token
from stalwart.data.types import utcnow
from stalwart.ops.backup import list_archives
from stalwart.ops.retention import PURGED_EVENT, purge
from stalwart.settings import Settings
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


async def _populate(settings: Settings) -> dict[str, str]:
    """One row just past its retention period and one just inside it, per kind."""
    now = utcnow()
    days = timedelta(days=1)
    db = Database(settings)
    await db.start()
    ids: dict[str, str] = {}
    try:
        async with db.session() as s:
            owner = Account(email="owner@example.com", password_hash="h", display_name="o", last_login_at=now)
            dormant_old = Account(
                email="old@example.com", password_hash="h", display_name="o", created_at=now - 366 * days
            )
            dormant_new = Account(
                email="new@example.com", password_hash="h", display_name="o", created_at=now - 364 * days
            )
            admin = Account(
                email="admin@example.com",
                password_hash="h",
                display_name="a",
                role="admin",
                created_at=now - 400 * days,
            )
            s.add_all([owner, dormant_old, dormant_new, admin])
            await s.flush()
            ids.update(owner=owner.id, dormant_old=dormant_old.id, dormant_new=dormant_new.id, admin=admin.id)
            old_trash = Note(account_id=owner.id, title="old", tags=["t"], deleted_at=now - 31 * days)
            new_trash = Note(account_id=owner.id, title="new", tags=["t"], deleted_at=now - 29 * days)
            live = Note(account_id=owner.id, title="live", tags=["t"], created_at=now - 999 * days)
            s.add_all([old_trash, new_trash, live])
            await s.flush()
            ids.update(old_trash=old_trash.id, new_trash=new_trash.id, live=live.id)
            s.add_all([NoteTag(note_id=n.id, tag="t", account_id=owner.id) for n in (old_trash, new_trash, live)])
            for name, expires, revoked in (
                ("expired_old", now - 8 * days, None),
                ("expired_new", now - 6 * days, None),
                ("revoked_old", now + 30 * days, now - 8 * days),
                ("revoked_new", now + 30 * days, now - 6 * days),
                ("valid", now + 30 * days, None),
            ):
                token = Token(
                    account_id=owner.id,
                    token_hash=uuid.uuid4().hex * 2,
                    created_at=now - 40 * days,
                    expires_at=expires,
                    revoked_at=revoked,
                )
                s.add(token)
                await s.flush()
                ids[name] = token.id
            s.add_all(
                [
                    AuditEvent(event="auth.login", subject=owner.id, at=now - 366 * days),
                    AuditEvent(event="auth.login", subject=owner.id, at=now - 364 * days),
                ]
            )
            await s.commit()
    finally:
        await db.close()
    return ids


async def _ids(settings: Settings, model: type) -> set[str]:
    db = Database(settings)
    await db.start()
    try:
        async with db.session() as s:
            return set((await s.scalars(select(model.id))).all())  # type: ignore[attr-defined]
    finally:
        await db.close()


async def test_purge_removes_what_is_past_retention_and_keeps_the_rest(
    ops_settings: Settings,
) -> None:
    ids = await _populate(ops_settings)
    db = Database(ops_settings)
    await db.start()
    try:
        dry = await purge(db, ops_settings, dry_run=True)
        assert dry.counts() == {
            "trashed_notes": 1,
            "tokens": 2,
            "inactive_accounts": 1,
            "audit_events": 1,
            "backups": 0,
        }
        assert dry.lines()[0] == "would remove 1 trashed notes"
        assert ids["old_trash"] in await _ids(ops_settings, Note), "dry run removes nothing"

        report = await purge(db, ops_settings, actor="cli")
        assert report.counts() == dry.counts()
        assert report.lines() == [
            "removed 1 trashed notes",
            "removed 2 tokens",
            "removed 1 inactive accounts",
            "removed 1 audit events",
            "removed 0 backups",
        ]
        async with db.session() as s:
            tags = set((await s.scalars(select(NoteTag.note_id))).all())
            audit_left = (await s.scalars(select(AuditEvent.event).where(AuditEvent.event == "auth.login"))).all()
            purged = (await s.scalars(select(AuditEvent).where(AuditEvent.event == PURGED_EVENT))).one()
        assert purged.actor == "cli"
        assert purged.details == report.counts()
        assert len(audit_left) == 1
        assert tags == {ids["new_trash"], ids["live"]}
        assert await purge(db, ops_settings) == purge_nothing()  # idempotent
    finally:
        await db.close()
    assert await _ids(ops_settings, Note) == {ids["new_trash"], ids["live"]}
    assert await _ids(ops_settings, Token) == {ids["expired_new"], ids["revoked_new"], ids["valid"]}
    assert await _ids(ops_settings, Account) == {ids["owner"], ids["dormant_new"], ids["admin"]}


def purge_nothing() -> object:
    from stalwart.ops.retention import PurgeReport

    return PurgeReport(0, 0, 0, 0, 0, dry_run=False)


async def test_zero_days_keeps_that_kind_forever(tmp_path: Path, fresh_url: str) -> None:
    settings = make_settings(
        tmp_path,
        database_url=fresh_url,
        retention_trash_days=0,
        retention_tokens_days=0,
        retention_inactive_accounts_days=0,
        retention_audit_days=0,
        retention_backups_days=0,
    )
    await _populate(settings)
    db = Database(settings)
    await db.start()
    try:
        report = await purge(db, settings)
        async with db.session() as s:
            notes = await s.scalar(select(func.count()).select_from(Note))
    finally:
        await db.close()
    assert report.counts() == {"trashed_notes": 0, "tokens": 0, "inactive_accounts": 0, "audit_events": 0, "backups": 0}
    assert notes == 3


async def test_old_backups_go_but_never_the_newest(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, retention_backups_days=30)
    folder = settings.effective_backup_dir
    folder.mkdir(parents=True)
    now = utcnow()
    names = [f"stalwart-{(now - timedelta(days=d)):%Y%m%dT%H%M%S%fZ}-00000{i}.tar" for i, d in enumerate((40, 35, 5))]
    for n in names:
        (folder / n).write_bytes(b"x")
    (folder / (names[0] + ".verified.json")).write_text("{}")
    await anyio.to_thread.run_sync(migrate_to, settings.effective_database_url)
    db = Database(settings)
    await db.start()
    try:
        assert (await purge(db, settings, dry_run=True)).backups == 2
        assert (await purge(db, settings)).backups == 2
    finally:
        await db.close()
    assert sorted(p.name for p in folder.iterdir()) == [names[2]]
    # Even when every archive is past retention, the newest one stays.
    settings = make_settings(tmp_path, retention_backups_days=1)
    db = Database(settings)
    await db.start()
    try:
        assert (await purge(db, settings)).backups == 0
    finally:
        await db.close()
    assert [a.name for a in list_archives(settings)] == [names[2]]


def test_cli_purge_prints_counts_per_kind(tmp_path: Path) -> None:
    env = {"STALWART_ENV": "test", "STALWART_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    assert runner.invoke(cli_app, ["migrate"], env=env).exit_code == 0
    result = runner.invoke(cli_app, ["purge", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "would remove 0 trashed notes",
        "would remove 0 tokens",
        "would remove 0 inactive accounts",
        "would remove 0 audit events",
        "would remove 0 backups",
    ]
    result = runner.invoke(cli_app, ["purge"], env=env)
    assert result.stdout.splitlines()[0] == "removed 0 trashed notes"
