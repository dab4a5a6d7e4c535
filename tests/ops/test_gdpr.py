"""GDPR erasure and export from the operator side; the erasure ledger; erasure survives restore."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import anyio.to_thread
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from stalwart.cli import app as cli_app
from stalwart.data.engine import Database
from stalwart.data.models import Account, AuditEvent
from stalwart.ops import erasure_ledger
from stalwart.ops.backup import create_backup
from stalwart.ops.gdpr import erase_account, pseudonym
from stalwart.ops.restore import restore_archive
from stalwart.settings import Settings
from tests.conftest import make_settings
from tests.ops.helpers import count_tables, remains_of, seed

pytestmark = pytest.mark.anyio


async def _account(settings: Settings, account_id: str) -> Account | None:
    db = Database(settings)
    await db.start()
    try:
        async with db.session() as s:
            return await s.get(Account, account_id)
    finally:
        await db.close()


async def _erase(settings: Settings, account_id: str) -> object:
    db = Database(settings)
    await db.start()
    try:
        async with db.session() as s:
            # An event where the account acted on someone else: the actor is pseudonymized too.
            s.add(
                AuditEvent(
                    event="admin.granted", subject="someone-else", actor=account_id, ip="198.51.100.0", details={}
                )
            )
            await s.commit()
        async with db.session() as s:
            return await erase_account(s, settings, account_id, actor="cli", reason="test")
    finally:
        await db.close()


async def _events(settings: Settings) -> list[AuditEvent]:
    db = Database(settings)
    await db.start()
    try:
        async with db.session() as s:
            return list((await s.scalars(select(AuditEvent).order_by(AuditEvent.at))).all())
    finally:
        await db.close()


async def test_erasure_leaves_nothing_of_the_account_table_by_table(ops_settings: Settings) -> None:
    victim_id, other_id = await seed(ops_settings, accounts=2, notes=4)
    victim = await _account(ops_settings, victim_id)
    assert victim is not None
    email = victim.email
    before = await count_tables(ops_settings)

    report = await _erase(ops_settings, victim_id)
    alias = pseudonym(ops_settings, victim_id)
    assert report is not None
    assert (report.notes, report.tokens, report.audit_events, report.pseudonym) == (4, 1, 2, alias)  # type: ignore[attr-defined]

    assert await remains_of(ops_settings, victim_id, email) == {}
    after = await count_tables(ops_settings)
    assert after["accounts"] == before["accounts"] - 1
    assert after["notes"] == before["notes"] - 4
    assert after["note_tags"] == before["note_tags"] - 8
    assert after["tokens"] == before["tokens"] - 1
    # The events stay (one more: the erasure itself); the person in them is a pseudonym.
    assert after["audit_events"] == before["audit_events"] + 2
    events = await _events(ops_settings)
    theirs = [e for e in events if alias in (e.subject, e.actor)]
    assert {e.event for e in theirs} == {"auth.login", "admin.granted", "account.erased"}
    assert all(e.ip is None for e in theirs)
    erased = next(e for e in theirs if e.event == "account.erased")
    assert (erased.subject, erased.actor) == (alias, "cli")
    assert erased.details == {"reason": "test", "notes": 4, "tokens": 1}
    # The other account is untouched.
    assert await _account(ops_settings, other_id) is not None
    assert any(e.subject == other_id and e.ip == "203.0.113.0" for e in events)


async def test_ledger_holds_id_email_hash_and_time_only(ops_settings: Settings) -> None:
    (victim_id,) = await seed(ops_settings, accounts=1)
    victim = await _account(ops_settings, victim_id)
    assert victim is not None
    await _erase(ops_settings, victim_id)
    path = erasure_ledger.ledger_path(ops_settings)
    assert path == ops_settings.data_dir / "erasures" / "ledger.jsonl"
    assert not path.is_relative_to(ops_settings.effective_backup_dir)
    assert path.stat().st_mode & 0o777 == 0o600
    raw = path.read_text()
    assert victim.email not in raw
    assert victim.email.split("@")[0] not in raw
    (line,) = raw.splitlines()
    entry = json.loads(line)
    assert set(entry) == {"v", "account_id", "email_hash", "at"}
    assert entry["account_id"] == victim_id
    assert entry["email_hash"] == erasure_ledger.email_hash(ops_settings, victim.email)
    assert len(entry["email_hash"]) == 64


def test_pseudonym_is_keyed_stable_and_not_the_id(tmp_path: Path) -> None:
    a = make_settings(tmp_path, secret_key="k" * 40)
    b = make_settings(tmp_path, secret_key="j" * 40)
    assert pseudonym(a, "id-1") == pseudonym(a, "id-1")
    assert pseudonym(a, "id-1") != pseudonym(a, "id-2")
    assert pseudonym(a, "id-1") != pseudonym(b, "id-1")
    assert pseudonym(a, "id-1").startswith("erased:")
    assert "id-1" not in pseudonym(a, "id-1")
    assert len(pseudonym(a, "id-1")) <= 64


async def test_an_erasure_survives_the_restore_of_an_older_backup(ops_settings: Settings) -> None:
    victim_id, keeper_id = await seed(ops_settings, accounts=2, notes=3)
    victim = await _account(ops_settings, victim_id)
    assert victim is not None
    result = await create_backup(ops_settings)  # last week's backup still holds the victim
    await _erase(ops_settings, victim_id)

    report = await anyio.to_thread.run_sync(restore_archive, ops_settings, result.path)
    assert report.reapplied == 1
    assert await _account(ops_settings, victim_id) is None
    assert await _account(ops_settings, keeper_id) is not None
    assert await remains_of(ops_settings, victim_id, victim.email) == {}
    events = await _events(ops_settings)
    reapplied = [e for e in events if e.event == "account.erased"]
    assert [e.actor for e in reapplied] == ["restore"]
    assert reapplied[0].subject == pseudonym(ops_settings, victim_id)
    assert events[-1].event == "backup.restored"
    assert events[-1].details["erasures_reapplied"] == 1


async def test_email_hash_matches_only_erasures_made_after_the_archive(
    ops_settings: Settings,
) -> None:
    """A person erased long ago may register again; an older backup holding their new account
    must not lose it. Erasures after the archive match by email hash too."""
    returning_id, renamed_id = await seed(ops_settings, accounts=2, notes=1)
    returning = await _account(ops_settings, returning_id)
    renamed = await _account(ops_settings, renamed_id)
    assert returning is not None
    assert renamed is not None
    erasure_ledger.append(ops_settings, "old-account-id", returning.email, at=returning.created_at - timedelta(days=30))
    result = await create_backup(ops_settings)
    # After the archive: an erasure naming the email of an account whose id differs.
    erasure_ledger.append(ops_settings, "some-other-id", renamed.email)

    report = await anyio.to_thread.run_sync(restore_archive, ops_settings, result.path)
    assert report.reapplied == 1
    assert await _account(ops_settings, returning_id) is not None
    assert await _account(ops_settings, renamed_id) is None


def _cli_env(tmp_path: Path) -> dict[str, str]:
    return {"STALWART_ENV": "test", "STALWART_DATA_DIR": str(tmp_path)}


def test_cli_export_and_erase(tmp_path: Path) -> None:
    import asyncio

    env = _cli_env(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli_app, ["migrate"], env=env).exit_code == 0
    settings = make_settings(tmp_path, data_dir=tmp_path)
    (account_id,) = asyncio.run(seed(settings, accounts=1, notes=2))

    result = runner.invoke(cli_app, ["gdpr", "export", "--account", account_id], env=env)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["format"] == "stalwart-export/1"
    assert document["account"]["id"] == account_id
    assert len(document["notes"]) == 2
    assert "password_hash" not in result.stdout
    assert "token_hash" not in result.stdout

    out = tmp_path / "export.json"
    result = runner.invoke(cli_app, ["gdpr", "export", "--account", account_id, "--output", str(out)], env=env)
    assert result.stdout.startswith(f"wrote the export of account {account_id} to {out}")
    assert out.stat().st_mode & 0o777 == 0o600

    result = runner.invoke(cli_app, ["gdpr", "erase", "--account", account_id], input="n\n", env=env)
    assert result.exit_code == 1
    assert result.stderr == "error: aborted, nothing erased\n"

    result = runner.invoke(cli_app, ["gdpr", "erase", "--account", account_id, "--yes"], env=env)
    assert result.exit_code == 0, result.output
    alias = pseudonym(settings, account_id)
    assert result.stdout.splitlines() == [
        f"erased account {account_id}: 2 notes and 1 tokens deleted, "
        f"3 audit events pseudonymized as {alias}",  # login + two exports
        f"erasure recorded in the ledger {tmp_path / 'erasures' / 'ledger.jsonl'}",
    ]
    result = runner.invoke(cli_app, ["gdpr", "erase", "--account", account_id, "--yes"], env=env)
    assert result.exit_code == 1
    assert result.stderr == f"error: no account with id {account_id}\n"
    result = runner.invoke(cli_app, ["gdpr", "export", "--account", account_id], env=env)
    assert result.exit_code == 1
    assert result.stderr == f"error: no account with id {account_id}\n"
