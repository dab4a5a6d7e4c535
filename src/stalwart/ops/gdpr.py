"""GDPR: right of access (export) and right to erasure, shared by the API and the CLI."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import anyio.to_thread
from pydantic import BaseModel
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stalwart.data.models import Account, AuditEvent, Note, NoteTag, Token
from stalwart.data.types import utcnow
from stalwart.ops import erasure_ledger
from stalwart.ops.audit import record
from stalwart.settings import Settings

__all__ = [
    "EXPORT_FORMAT",
    "AccountExport",
    "ErasureReport",
    "erase_account",
    "export_account",
    "pseudonym",
]

EXPORT_FORMAT = "stalwart-export/1"


class ExportAccount(BaseModel):
    id: str
    email: str
    display_name: str
    role: str
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None


class ExportNote(BaseModel):
    id: str
    title: str
    body: str
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    version: int
    deleted_at: datetime | None


class ExportToken(BaseModel):
    """Token metadata only: the secret is never stored, its hash is not exported."""

    id: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


class ExportAuditEvent(BaseModel):
    id: str
    at: datetime
    event: str
    subject: str | None
    actor: str | None
    ip: str | None
    details: dict[str, Any]


class AccountExport(BaseModel):
    """Every piece of personal data held on one account (GDPR articles 15 and 20)."""

    format: Literal["stalwart-export/1"] = "stalwart-export/1"
    exported_at: datetime
    account: ExportAccount
    notes: list[ExportNote]
    tokens: list[ExportToken]
    audit_events: list[ExportAuditEvent]


def pseudonym(settings: Settings, account_id: str) -> str:
    """Stable per person (their events stay linkable to each other), not reversible without
    the secret key, and not the account id."""
    key = settings.secret_key.get_secret_value().encode()
    digest = hmac.new(key, b"audit-subject:" + account_id.encode(), hashlib.sha256).hexdigest()
    return f"erased:{digest[:32]}"


async def export_account(
    session: AsyncSession, account_id: str, *, actor: str, ip: str | None = None
) -> AccountExport | None:
    """The export document, and an `account.exported` audit event committed with it."""
    account = await session.get(Account, account_id)
    if account is None:
        return None
    notes = (
        await session.scalars(select(Note).where(Note.account_id == account_id).order_by(Note.created_at, Note.id))
    ).all()
    tokens = (
        await session.scalars(select(Token).where(Token.account_id == account_id).order_by(Token.created_at, Token.id))
    ).all()
    events = (
        await session.scalars(
            select(AuditEvent)
            .where(or_(AuditEvent.subject == account_id, AuditEvent.actor == account_id))
            .order_by(AuditEvent.at, AuditEvent.id)
        )
    ).all()
    document = AccountExport(
        exported_at=utcnow(),
        account=ExportAccount.model_validate(account, from_attributes=True),
        notes=[ExportNote.model_validate(n, from_attributes=True) for n in notes],
        tokens=[ExportToken.model_validate(t, from_attributes=True) for t in tokens],
        audit_events=[ExportAuditEvent.model_validate(e, from_attributes=True) for e in events],
    )
    record(
        session,
        "account.exported",
        subject=account_id,
        actor=actor,
        ip=ip,
        details={"notes": len(notes), "tokens": len(tokens), "audit_events": len(events)},
    )
    await session.commit()
    return document


@dataclass(frozen=True, slots=True)
class ErasureReport:
    pseudonym: str
    notes: int
    tokens: int
    audit_events: int


def _count(result: Any) -> int:
    return int(result.rowcount or 0)


async def erase_account(
    session: AsyncSession,
    settings: Settings,
    account_id: str,
    *,
    actor: str | None,
    reason: str,
    ledger: bool = True,
) -> ErasureReport | None:
    """Delete the account and all its personal data, pseudonymize its audit trail, commit.

    One transaction. The ledger line is written (and fsynced) before the commit: if the
    commit then fails, a later restore erases an account whose owner asked for it anyway;
    the other order could bring back a person who was erased.
    `actor` None means the person erased themselves (the event names their pseudonym).
    """
    # Locked (PostgreSQL): a concurrent erasure of the same account waits here, then finds it
    # gone. Re-read even if the session holds it already: the caller's copy may predate that
    # erasure's commit.
    account = await session.scalar(
        select(Account)
        .where(Account.id == account_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if account is None:
        return None
    email = account.email
    alias = pseudonym(settings, account_id)
    await session.execute(delete(NoteTag).where(NoteTag.account_id == account_id))
    notes = _count(await session.execute(delete(Note).where(Note.account_id == account_id)))
    tokens = _count(await session.execute(delete(Token).where(Token.account_id == account_id)))
    # The events stay (security history), the person in them is no longer identifiable.
    theirs = or_(AuditEvent.subject == account_id, AuditEvent.actor == account_id)
    audited = int(await session.scalar(select(func.count()).select_from(AuditEvent).where(theirs)) or 0)
    for column in (AuditEvent.subject, AuditEvent.actor):
        await session.execute(update(AuditEvent).where(column == account_id).values({column: alias, "ip": None}))
    if not _count(await session.execute(delete(Account).where(Account.id == account_id))):
        # SQLite locks no row on read: a concurrent erasure committed after our read above, and
        # it has written the event and the ledger line. This one must write neither.
        await session.rollback()
        return None
    record(
        session,
        "account.erased",
        subject=alias,
        actor=actor or alias,
        details={"reason": reason, "notes": notes, "tokens": tokens},
    )
    await session.flush()
    if ledger:
        await anyio.to_thread.run_sync(erasure_ledger.append, settings, account_id, email)
    await session.commit()
    return ErasureReport(alias, notes, tokens, audited)
