"""The trash: deleted notes, restorable until the retention purge removes them for good."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, cast
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy import CursorResult, and_, delete, or_, select
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException

from stalwart.api.cursors import decode_cursor, encode_cursor
from stalwart.api.deps import Caller, Res, Session
from stalwart.api.etags import version_etag
from stalwart.api.lifecycle_schemas import TrashedNoteOut
from stalwart.api.notes import note_out
from stalwart.api.responses import errors
from stalwart.api.schemas import ListPage, NoteOut
from stalwart.data.models import Note, NoteTag
from stalwart.data.types import utcnow

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/trash", tags=["trash"])

_NOT_FOUND = "No such note in your trash."


def _deleted(note: Note) -> datetime:
    assert note.deleted_at is not None
    return note.deleted_at


def _out(note: Note, keep_days: int) -> TrashedNoteOut:
    assert note.deleted_at is not None
    return TrashedNoteOut(
        **note_out(note).model_dump(),
        deleted_at=note.deleted_at,
        # A period of 0 keeps the trash (ops/retention.py): no purge is due.
        purge_after=note.deleted_at + timedelta(days=keep_days) if keep_days > 0 else None,
    )


async def _trashed(session: Session, caller: Caller, note_id: str) -> Note:
    note = await session.scalar(
        select(Note).where(Note.id == note_id, Note.account_id == caller.account_id, Note.deleted_at.is_not(None))
    )
    if note is None:
        raise HTTPException(404, _NOT_FOUND)
    return note


@router.get(
    "",
    response_model=ListPage[TrashedNoteOut],
    responses=errors(400, 401, 422),
    summary="List the notes in your trash, most recently deleted first",
)
async def list_trash(
    request: Request,
    caller: Caller,
    session: Session,
    resources: Res,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ListPage[TrashedNoteOut]:
    stmt = (
        select(Note)
        .where(Note.account_id == caller.account_id, Note.deleted_at.is_not(None))
        .order_by(Note.deleted_at.desc(), Note.id.desc())
        .limit(limit + 1)
    )
    if cursor:
        at, last_id = decode_cursor(cursor)
        stmt = stmt.where(or_(Note.deleted_at < at, and_(Note.deleted_at == at, Note.id < last_id)))
    rows = list((await session.scalars(stmt)).all())
    next_url = None
    if len(rows) > limit:
        rows = rows[:limit]
        cursor_out = encode_cursor(_deleted(rows[-1]), rows[-1].id)
        next_url = f"{request.url.path}?{urlencode({'limit': limit, 'cursor': cursor_out})}"
    keep = resources.settings.retention_trash_days
    return ListPage[TrashedNoteOut](data=[_out(n, keep) for n in rows], next=next_url)


@router.post(
    "/{note_id}/restore",
    response_model=NoteOut,
    responses=errors(401, 404, 409),
    summary="Restore a note from your trash",
)
async def restore_note(
    note_id: str, caller: Caller, session: Session, resources: Res, response: Response
) -> NoteOut:
    note = await _trashed(session, caller, note_id)
    note.deleted_at = None
    note.updated_at = utcnow()  # the mapper bumps the version: cached copies and ETags change
    try:
        await session.commit()
    except StaleDataError:
        await session.rollback()
        raise HTTPException(409, "The note was changed by another request; try again.") from None
    await resources.invalidate_notes(caller.account_id)
    response.headers["ETag"] = version_etag(note.version)  # as every write of one note answers
    return note_out(note)


@router.delete(
    "/{note_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(401, 404),
    summary="Delete a note from your trash for good, now",
)
async def purge_note(note_id: str, caller: Caller, session: Session) -> Response:
    note = await _trashed(session, caller, note_id)
    await session.execute(delete(NoteTag).where(NoteTag.note_id == note.id))
    # Conditional on the note still being in the trash: a concurrent purge (or restore) since
    # the read above leaves nothing to delete, which is this request's 404, not an error.
    purged = cast(
        "CursorResult[Any]",
        await session.execute(
            delete(Note).where(
                Note.id == note.id, Note.account_id == caller.account_id, Note.deleted_at.is_not(None)
            )
        ),
    )
    if purged.rowcount == 0:
        await session.rollback()
        raise HTTPException(404, _NOT_FOUND)
    await session.commit()
    return Response(status_code=204)
