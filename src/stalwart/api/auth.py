"""Log in (issue a bearer token) and log out (revoke it)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import select, update
from starlette.exceptions import HTTPException

from stalwart.api.deps import Caller, Res, Session, client_ip
from stalwart.api.responses import errors
from stalwart.api.schemas import TokenCreate, TokenOut
from stalwart.credentials import hash_token, new_token
from stalwart.data.models import Account, Token
from stalwart.data.types import utcnow
from stalwart.ops.audit import record

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/auth/tokens", tags=["auth"])

_BAD_CREDENTIALS = "The email or password is wrong."


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenOut,
    responses=errors(400, 401, 413, 415, 422),
    summary="Log in: exchange email and password for a bearer token",
)
async def create_token(
    body: TokenCreate, request: Request, response: Response, session: Session, resources: Res
) -> TokenOut:
    email = body.email.lower()
    await resources.check_login_budget(email, request)
    account = await session.scalar(select(Account).where(Account.email == email))
    ok = await resources.passwords.verify(account.password_hash if account else None, body.password)
    if account is None or not ok:
        record(
            session, "auth.login_failed", subject=account.id if account else None,
            ip=client_ip(request),
        )
        await session.commit()
        raise HTTPException(401, _BAD_CREDENTIALS, headers={"WWW-Authenticate": "Bearer"})
    token = new_token()
    now = utcnow()
    expires = now + timedelta(hours=resources.settings.token_ttl_hours)
    row = Token(account_id=account.id, token_hash=hash_token(token), created_at=now, expires_at=expires)
    session.add(row)
    account.last_login_at = now
    checked = account.password_hash
    await session.flush()
    # A password change may have committed since the password was checked above: its token
    # revocation did not see this token, which would outlive it. The flush updated the account
    # row, so it is ours until the commit, and what is read now is final.
    if await session.scalar(select(Account.password_hash).where(Account.id == account.id)) != checked:
        await session.rollback()
        raise HTTPException(401, _BAD_CREDENTIALS, headers={"WWW-Authenticate": "Bearer"})
    record(session, "auth.login", subject=account.id, actor=account.id, ip=client_ip(request))
    record(session, "token.created", subject=account.id, actor=account.id, details={"token_id": row.id})
    await session.commit()
    response.headers["Location"] = "/api/v1/auth/tokens/current"
    response.headers["Cache-Control"] = "no-store"
    return TokenOut(token=token, expires_at=expires)


@router.delete(
    "/current",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(401),
    summary="Log out: revoke the token used for this request",
)
async def revoke_current(request: Request, caller: Caller, session: Session) -> Response:
    await session.execute(
        update(Token).where(Token.id == caller.token_id).values(revoked_at=utcnow())
    )
    record(
        session, "token.revoked", subject=caller.account_id, actor=caller.account_id,
        ip=client_ip(request), details={"token_id": caller.token_id},
    )
    await session.commit()
    return Response(status_code=204)
