"""Operator endpoints, for accounts with the admin role."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query
from sqlalchemy import select

from stalwart.api.deps import Admin, Session
from stalwart.api.responses import errors
from stalwart.api.schemas import AdminAccountOut, ListPage
from stalwart.data.models import Account

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.get(
    "/accounts",
    response_model=ListPage[AdminAccountOut],
    responses=errors(401, 403, 422),
    summary="List accounts (administrators)",
)
async def list_accounts(
    admin: Admin,
    session: Session,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    after: Annotated[str | None, Query(max_length=254, description="email of the last row seen")] = None,
) -> ListPage[AdminAccountOut]:
    stmt = select(Account).order_by(Account.email).limit(limit + 1)
    if after is not None:
        stmt = stmt.where(Account.email > after)
    rows = list((await session.scalars(stmt)).all())
    next_url = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_url = "/api/v1/admin/accounts?" + urlencode({"limit": limit, "after": rows[-1].email})
    return ListPage[AdminAccountOut](
        data=[AdminAccountOut.model_validate(r, from_attributes=True) for r in rows], next=next_url
    )
