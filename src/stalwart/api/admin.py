"""Operator endpoints, for accounts with the admin role."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query
from sqlalchemy import and_, or_, select

from stalwart.api.cursors import decode_cursor, encode_cursor
from stalwart.api.deps import Admin, Session
from stalwart.api.responses import errors
from stalwart.api.schemas import AdminAccountOut, ListPage
from stalwart.data.models import Account

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.get(
    "/accounts",
    response_model=ListPage[AdminAccountOut],
    responses=errors(400, 401, 403, 422),
    summary="List accounts (administrators)",
)
async def list_accounts(
    admin: Admin,
    session: Session,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, description="`next` of the previous page")] = None,
) -> ListPage[AdminAccountOut]:
    # Oldest first, by an opaque cursor as every list here: an email in the next URL would
    # land in browser histories and proxy logs.
    stmt = select(Account).order_by(Account.created_at, Account.id).limit(limit + 1)
    if cursor:
        at, last_id = decode_cursor(cursor)
        stmt = stmt.where(or_(Account.created_at > at, and_(Account.created_at == at, Account.id > last_id)))
    rows = list((await session.scalars(stmt)).all())
    next_url = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_url = "/api/v1/admin/accounts?" + urlencode(
            {"limit": limit, "cursor": encode_cursor(rows[-1].created_at, rows[-1].id)}
        )
    return ListPage[AdminAccountOut](
        data=[AdminAccountOut.model_validate(r, from_attributes=True) for r in rows], next=next_url
    )
