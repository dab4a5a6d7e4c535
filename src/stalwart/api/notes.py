"""Notes: owner-only CRUD with cursor pagination, tag filter and title search."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import delete, select
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException

from stalwart.api.cursors import decode_cursor as _decode
from stalwart.api.cursors import encode_cursor as _encode
from stalwart.api.deps import Caller, Res, Session
from stalwart.api.etags import check_if_match, list_etag, not_modified, version_etag
from stalwart.api.responses import errors
from stalwart.api.sanitize import sanitize_html
from stalwart.api.schemas import (
    BODY_MAX_LENGTH,
    ListPage,
    NoteCreate,
    NoteOut,
    NoteUpdate,
    Tag,
    has_body_control_characters,
)
from stalwart.data.models import Note, NoteTag
from stalwart.data.reads import NoteQuery, NoteRow
from stalwart.data.types import utcnow

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/notes", tags=["notes"])

_NOT_FOUND = "No such note."


def encode_cursor(row: NoteRow) -> str:
    return _encode(row.created_at, row.id)


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    return _decode(cursor)


def _dedupe(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


def note_out(row: NoteRow | Note) -> NoteOut:
    return NoteOut(
        id=row.id, title=row.title, body=row.body, tags=list(row.tags),
        created_at=row.created_at, updated_at=row.updated_at, version=row.version,
    )


async def _owned(session: Session, caller: Caller, note_id: str) -> Note:
    note = await session.scalar(
        select(Note).where(
            Note.id == note_id, Note.account_id == caller.account_id, Note.deleted_at.is_(None)
        )
    )
    if note is None:
        # Not yours and not there look the same: a 403 would confirm the id exists.
        raise HTTPException(404, _NOT_FOUND)
    return note


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=NoteOut,
    responses=errors(400, 401, 413, 415, 422),
    summary="Create a note",
)
async def create_note(
    body: NoteCreate, caller: Caller, session: Session, response: Response, resources: Res
) -> NoteOut:
    now = utcnow()
    tags = _dedupe(body.tags)
    note = Note(
        account_id=caller.account_id, title=body.title, body=_sanitized(body.body), tags=tags,
        created_at=now, updated_at=now, version=1,
    )
    session.add(note)
    await session.flush()
    session.add_all([NoteTag(note_id=note.id, tag=t, account_id=caller.account_id) for t in tags])
    await session.commit()
    await resources.invalidate_notes(caller.account_id)
    response.headers["Location"] = f"/api/v1/notes/{note.id}"
    response.headers["ETag"] = version_etag(note.version)
    return note_out(note)


@router.get(
    "",
    response_model=ListPage[NoteOut],
    responses={304: {"description": "Not modified (If-None-Match)"}, **errors(400, 401, 422)},
    summary="List your notes, newest first",
)
async def list_notes(
    request: Request,
    response: Response,
    caller: Caller,
    resources: Res,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    tag: Annotated[Tag | None, Query()] = None,
    q: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> ListPage[NoteOut]:
    after = decode_cursor(cursor) if cursor else None
    rows = await resources.db.reads.list_notes(
        NoteQuery(account_id=caller.account_id, limit=limit + 1, after=after, tag=tag, q=q)
    )
    next_url = None
    if len(rows) > limit:
        rows = rows[:limit]
        params: dict[str, str | int] = {"limit": limit, "cursor": encode_cursor(rows[-1])}
        if tag is not None:
            params["tag"] = tag
        if q is not None:
            params["q"] = q
        next_url = f"{request.url.path}?{urlencode(params)}"
    etag = list_etag(((r.id, r.version) for r in rows), next_url)
    unchanged = not_modified(request, etag)
    if unchanged is not None:
        return unchanged  # type: ignore[return-value]
    response.headers["ETag"] = etag
    return ListPage[NoteOut](data=[note_out(r) for r in rows], next=next_url)


@router.get(
    "/{note_id}",
    response_model=NoteOut,
    responses={304: {"description": "Not modified (If-None-Match)"}, **errors(401, 404)},
    summary="Read one of your notes",
)
async def get_note(
    note_id: str, request: Request, response: Response, caller: Caller, resources: Res
) -> NoteOut:
    row = await resources.db.reads.get_note(caller.account_id, note_id)
    if row is None:
        raise HTTPException(404, _NOT_FOUND)
    etag = version_etag(row.version)
    unchanged = not_modified(request, etag)
    if unchanged is not None:
        return unchanged  # type: ignore[return-value]
    response.headers["ETag"] = etag
    return note_out(row)


@router.patch(
    "/{note_id}",
    response_model=NoteOut,
    responses=errors(400, 401, 404, 409, 412, 413, 415, 422),
    summary="Change one of your notes (send If-Match with its ETag to avoid lost updates)",
)
async def update_note(
    note_id: str, body: NoteUpdate, request: Request, response: Response, caller: Caller,
    session: Session, resources: Res,
) -> NoteOut:
    note = await _owned(session, caller, note_id)
    check_if_match(request, version_etag(note.version))
    # A null field is left as it is, like an absent one (schemas.NoteUpdate): only the
    # others count as changes, so `{"title": null}` makes no new version.
    changes = body.model_dump(exclude_none=True)
    # All column changes first: the tag statements below autoflush, and each flush of the
    # note is one version.
    if "title" in changes:
        note.title = changes["title"]
    if "body" in changes:
        note.body = _sanitized(changes["body"])
    tags = _dedupe(changes["tags"]) if "tags" in changes else None
    if tags is not None:
        note.tags = tags
    if changes:
        note.updated_at = utcnow()  # the version is bumped by the mapper (version_id_col)
    async with _versioned(session):
        if tags is not None:
            # This statement autoflushes the note's UPDATE, whose version check is where a
            # concurrent write shows: it must fail as a 409 here as much as at the commit.
            await session.execute(delete(NoteTag).where(NoteTag.note_id == note.id))
            session.add_all([NoteTag(note_id=note.id, tag=t, account_id=caller.account_id) for t in tags])
        await session.commit()
    await resources.invalidate_notes(caller.account_id)
    response.headers["ETag"] = version_etag(note.version)
    return note_out(note)


@router.delete(
    "/{note_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(401, 404, 409, 412),
    summary="Move one of your notes to the trash (see /api/v1/trash)",
)
async def delete_note(
    note_id: str, request: Request, caller: Caller, session: Session, resources: Res
) -> Response:
    note = await _owned(session, caller, note_id)
    check_if_match(request, version_etag(note.version))
    # Soft delete: restorable from the trash until the retention purge (stalwart.ops.retention).
    note.deleted_at = utcnow()
    async with _versioned(session):
        await session.commit()
    await resources.invalidate_notes(caller.account_id)
    return Response(status_code=204)


def _sanitized(text: str) -> str:
    """The body as stored: valid input itself (length, characters), so it can be sent back.

    Sanitizing escapes text ("<" becomes "&lt;"), so a body within the limit can come out past
    it; stored so, a client sending back what it read would be refused. Refused here instead.
    """
    clean = sanitize_html(text)
    if len(clean) > BODY_MAX_LENGTH:
        raise RequestValidationError([{
            "loc": ("body", "body"),
            "msg": f"The body is longer than {BODY_MAX_LENGTH} characters once its HTML is escaped",
        }])
    if has_body_control_characters(clean):
        # A character reference ("&#x1b;") passes the input check and comes out of the
        # sanitizer as the control character itself.
        raise RequestValidationError([{
            "loc": ("body", "body"),
            "msg": "control characters are not allowed, written as character references either",
        }])
    return clean


@asynccontextmanager
async def _versioned(session: Session) -> AsyncIterator[None]:
    try:
        yield
    except StaleDataError:
        # Another request changed the note between our read and our write.
        await session.rollback()
        raise HTTPException(409, "The note was changed by another request; fetch it again.") from None
