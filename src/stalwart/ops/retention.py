"""Retention: remove what the service no longer needs, one rule per kind of data.

* trashed notes (retention_trash_days, 30): in the trash for longer than that.
* tokens (retention_tokens_days, 7): expired or revoked longer ago than that.
* inactive accounts (retention_inactive_accounts_days, 365): never logged in and created
  longer ago than that (admins excepted); erased like a GDPR erasure.
* audit events (retention_audit_days, 365): older than that.
* backups (retention_backups_days, 30): archives older than that, never the newest one.

A value of 0 keeps that kind forever. Every run is idempotent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select

from stalwart.data.engine import Database
from stalwart.data.models import Account, AuditEvent, Note, NoteTag, Token
from stalwart.data.types import utcnow
from stalwart.ops.audit import record
from stalwart.ops.backup import expired_archives, remove_archive
from stalwart.ops.gdpr import erase_account
from stalwart.settings import Settings

__all__ = ["PURGED_EVENT", "PurgeReport", "purge"]

PURGED_EVENT = "retention.purged"


@dataclass(frozen=True, slots=True)
class PurgeReport:
    trashed_notes: int
    tokens: int
    inactive_accounts: int
    audit_events: int
    backups: int
    dry_run: bool

    def counts(self) -> dict[str, int]:
        values = asdict(self)
        values.pop("dry_run")
        return values

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        return [f"{verb} {count} {kind.replace('_', ' ')}" for kind, count in self.counts().items()]


def _cutoff(now: datetime, days: int) -> datetime | None:
    return now - timedelta(days=days) if days > 0 else None


def _conditions(settings: Settings, now: datetime) -> dict[str, ColumnElement[bool] | None]:
    trash = _cutoff(now, settings.retention_trash_days)
    tokens = _cutoff(now, settings.retention_tokens_days)
    accounts = _cutoff(now, settings.retention_inactive_accounts_days)
    audit = _cutoff(now, settings.retention_audit_days)
    return {
        "notes": None if trash is None else and_(Note.deleted_at.is_not(None), Note.deleted_at < trash),
        "tokens": None if tokens is None else or_(Token.expires_at < tokens, Token.revoked_at < tokens),
        "accounts": None
        if accounts is None
        else and_(Account.last_login_at.is_(None), Account.created_at < accounts, Account.role != "admin"),
        "audit": None if audit is None else AuditEvent.at < audit,
    }


async def purge(
    db: Database,
    settings: Settings,
    *,
    dry_run: bool = False,
    actor: str = "retention",
    now: datetime | None = None,
) -> PurgeReport:
    now = now or utcnow()
    where = _conditions(settings, now)
    counts: dict[str, int] = {}
    async with db.session() as session:
        for kind, model in (("notes", Note), ("tokens", Token), ("audit", AuditEvent)):
            condition = where[kind]
            counts[kind] = (
                0
                if condition is None
                else int(await session.scalar(select(func.count()).select_from(model).where(condition)) or 0)
            )
        account_ids: list[str] = []
        if where["accounts"] is not None:
            account_ids = list((await session.scalars(select(Account.id).where(where["accounts"]))).all())
    archives: list[Path] = expired_archives(settings, now)
    if dry_run:
        return PurgeReport(
            counts["notes"],
            counts["tokens"],
            len(account_ids),
            counts["audit"],
            len(archives),
            dry_run=True,
        )

    erased = 0
    for account_id in account_ids:
        async with db.session() as session:
            # Not in the erasure ledger: a restore brings such an account back and the next
            # purge removes it again by the same rule.
            if (
                await erase_account(session, settings, account_id, actor=actor, reason="retention", ledger=False)
                is not None
            ):
                erased += 1
    removed: dict[str, int] = {}
    async with db.session() as session:
        if where["notes"] is not None:
            doomed = select(Note.id).where(where["notes"])
            await session.execute(delete(NoteTag).where(NoteTag.note_id.in_(doomed)))
        for kind, model in (("notes", Note), ("tokens", Token), ("audit", AuditEvent)):
            condition = where[kind]
            result: Any = None if condition is None else await session.execute(delete(model).where(condition))
            removed[kind] = int(result.rowcount or 0) if result is not None else 0
        report = PurgeReport(
            removed["notes"],
            removed["tokens"],
            erased,
            removed["audit"],
            sum(1 for a in archives if remove_archive(a)),
            dry_run=False,
        )
        record(session, PURGED_EVENT, actor=actor, details=report.counts())
        await session.commit()
    return report
