"""Registration and account lookup."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException

from stalwart.api.deps import Caller, Res, Session, client_ip
from stalwart.api.responses import errors
from stalwart.api.schemas import AccountCreate, AccountOut
from stalwart.data.models import Account
from stalwart.ops.audit import record

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/accounts", tags=["accounts"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AccountOut,
    responses=errors(400, 409, 413, 415, 422),
    summary="Register an account",
)
async def register(
    body: AccountCreate, request: Request, response: Response, session: Session, resources: Res
) -> Account:
    email = body.email.lower()
    existing = await session.scalar(select(Account.id).where(Account.email == email))
    if existing is not None:
        raise HTTPException(409, "An account with this email already exists.")
    account = Account(
        email=email,
        password_hash=await resources.passwords.hash(body.password),
        display_name=body.display_name,
        role="user",  # never from the request body
    )
    session.add(account)
    try:
        # The INSERT happens at the flush: that is where a concurrent registration of the
        # same email, past the check above, hits the unique constraint.
        await session.flush()
        record(session, "account.registered", subject=account.id, actor=account.id, ip=client_ip(request))
        await session.commit()
    except IntegrityError:  # a concurrent registration won the race
        await session.rollback()
        raise HTTPException(409, "An account with this email already exists.") from None
    response.headers["Location"] = f"/api/v1/accounts/{account.id}"
    return account


@router.get(
    "/{account_id}",
    response_model=AccountOut,
    responses=errors(401, 404),
    summary="Read an account (your own; administrators: any)",
)
async def get_account(account_id: str, caller: Caller, session: Session) -> Account:
    if account_id != caller.account_id and caller.role != "admin":
        raise HTTPException(404, "No such account.")
    account = await session.get(Account, account_id)
    if account is None:
        raise HTTPException(404, "No such account.")
    return account
