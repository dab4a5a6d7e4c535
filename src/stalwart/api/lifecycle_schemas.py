"""Request and response models of the data-lifecycle endpoints: trash, erasure, audit, backups."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from stalwart.api.schemas import NoteOut, _Strict

__all__ = ["AccountErase", "AuditEventOut", "BackupJobOut", "BackupOut", "TrashedNoteOut"]


class TrashedNoteOut(NoteOut):
    deleted_at: datetime
    purge_after: datetime | None = Field(
        description="When the retention purge removes it for good; null when the trash is kept (retention 0)."
    )


class AccountErase(_Strict):
    current_password: Annotated[str, StringConstraints(min_length=1, max_length=128)] = Field(
        description="Your password, to confirm the erasure."
    )


class AuditEventOut(BaseModel):
    id: str
    at: datetime
    event: str
    subject: str | None = Field(description="Account id, or `erased:…` pseudonym after erasure.")
    actor: str | None
    ip: str | None = Field(description="Anonymized client address (IPv4 /24, IPv6 /48).")
    details: dict[str, Any]


class BackupOut(BaseModel):
    name: str
    size: int
    created_at: datetime
    verified: bool | None = Field(description="Last verification outcome; null: never verified.")
    verified_at: datetime | None
    encrypted: bool | None
    schema_revision: str | None
    row_counts: dict[str, int] | None


class BackupJobOut(BaseModel):
    status: Literal["running"] = "running"
    started_at: datetime
