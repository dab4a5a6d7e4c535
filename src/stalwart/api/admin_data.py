"""Administrators: the audit trail, and backups (list, start, download). Restore stays a CLI
operation (`stalwart restore FILE`): it replaces the database under the running service."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import FileResponse
from sqlalchemy import and_, or_, select
from starlette.exceptions import HTTPException

from stalwart.api.cursors import decode_cursor, encode_cursor
from stalwart.api.deps import Admin, Res, Session, client_ip
from stalwart.api.lifecycle_schemas import AuditEventOut, BackupJobOut, BackupOut
from stalwart.api.responses import errors
from stalwart.api.schemas import ListPage
from stalwart.data.models import AuditEvent
from stalwart.data.types import utcnow
from stalwart.ops.audit import record
from stalwart.ops.backup import ARCHIVE_NAME, list_archives

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.get(
    "/audit",
    response_model=ListPage[AuditEventOut],
    responses=errors(400, 401, 403, 422),
    summary="Read the audit trail, newest first (administrators)",
)
async def list_audit(
    request: Request,
    admin: Admin,
    session: Session,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    event: Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[a-z_.]+$")] = None,
    subject: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> ListPage[AuditEventOut]:
    stmt = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit + 1)
    if event is not None:
        stmt = stmt.where(AuditEvent.event == event)
    if subject is not None:
        stmt = stmt.where(AuditEvent.subject == subject)
    if cursor:
        at, last_id = decode_cursor(cursor)
        stmt = stmt.where(or_(AuditEvent.at < at, and_(AuditEvent.at == at, AuditEvent.id < last_id)))
    rows = list((await session.scalars(stmt)).all())
    next_url = None
    if len(rows) > limit:
        rows = rows[:limit]
        params: dict[str, str | int] = {"limit": limit, "cursor": encode_cursor(rows[-1].at, rows[-1].id)}
        if event is not None:
            params["event"] = event
        if subject is not None:
            params["subject"] = subject
        next_url = f"{request.url.path}?{urlencode(params)}"
    page = ListPage[AuditEventOut](
        data=[AuditEventOut.model_validate(r, from_attributes=True) for r in rows], next=next_url
    )
    # Reading the trail is itself an admin action worth a trace (who looked, at what).
    record(
        session,
        "audit.read",
        actor=admin.account_id,
        ip=client_ip(request),
        details={"event": event, "subject": subject, "page": bool(cursor)},
    )
    await session.commit()
    return page


@router.get(
    "/backups",
    response_model=ListPage[BackupOut],
    responses=errors(401, 403),
    summary="List backup archives, newest first (administrators)",
)
async def list_backups(admin: Admin, resources: Res) -> ListPage[BackupOut]:
    infos = await anyio.to_thread.run_sync(list_archives, resources.settings)
    return ListPage[BackupOut](
        data=[
            BackupOut(
                name=i.name,
                size=i.size,
                created_at=i.created_at,
                verified=i.verified,
                verified_at=i.verified_at,
                encrypted=None if i.manifest is None else i.manifest.encryption is not None,
                schema_revision=None if i.manifest is None else i.manifest.schema_revision,
                row_counts=None if i.manifest is None else i.manifest.row_counts,
            )
            for i in infos
        ],
        next=None,
    )


@router.post(
    "/backups",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BackupJobOut,
    responses=errors(401, 403, 409),
    summary="Start a backup now (administrators); it appears in the list when done",
)
async def start_backup(
    request: Request, response: Response, admin: Admin, session: Session, resources: Res
) -> BackupJobOut:
    lifecycle = resources.lifecycle
    assert lifecycle is not None
    started = utcnow()
    if not await lifecycle.start_backup(actor=admin.account_id):
        raise HTTPException(409, "A backup is already running; try again when it has finished.")
    record(session, "backup.started", actor=admin.account_id, ip=client_ip(request))
    await session.commit()
    response.headers["Location"] = "/api/v1/admin/backups"
    return BackupJobOut(started_at=started)


@router.get(
    "/backups/{name}",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The archive (tar)",
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        },
        **errors(401, 403, 404),
    },
    summary="Download one backup archive (administrators)",
)
async def download_backup(name: str, request: Request, admin: Admin, session: Session, resources: Res) -> FileResponse:
    # Only names this service writes: no path separators, no traversal.
    path = resources.settings.effective_backup_dir / name
    if not ARCHIVE_NAME.match(name) or not path.is_file():
        raise HTTPException(404, "No such backup.")
    record(
        session,
        "backup.downloaded",
        actor=admin.account_id,
        ip=client_ip(request),
        details={"archive": name},
    )
    await session.commit()
    return FileResponse(
        path,
        media_type="application/x-tar",
        filename=name,
        headers={"Cache-Control": "no-store"},
    )
