"""The caller's own account: read, rectify, export (GDPR access) and erase (GDPR erasure)."""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException

from stalwart.api.deps import Caller, Res, Session, client_ip, invalid_token
from stalwart.api.lifecycle_schemas import AccountErase
from stalwart.api.responses import errors
from stalwart.api.schemas import AccountOut, MeUpdate
from stalwart.data.models import Account, Token
from stalwart.data.types import utcnow
from stalwart.ops.audit import record
from stalwart.ops.gdpr import AccountExport, erase_account, export_account

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/me", tags=["me"])


async def _load(session: Session, caller: Caller) -> Account:
    account = await session.get(Account, caller.account_id)
    if account is None:  # erased between token lookup and now
        raise invalid_token()
    return account


@router.get("", response_model=AccountOut, responses=errors(401), summary="Your account")
async def get_me(caller: Caller, session: Session) -> Account:
    return await _load(session, caller)


@router.patch(
    "",
    response_model=AccountOut,
    responses=errors(400, 401, 403, 409, 413, 415, 422),
    summary="Change your display name, email or password",
)
async def update_me(
    body: MeUpdate, request: Request, caller: Caller, session: Session, resources: Res
) -> Account:
    account = await _load(session, caller)
    # Null is "leave as it is" (schemas.MeUpdate): `{"email": null}` needs no password.
    changes = body.model_dump(exclude_none=True)
    changed: list[str] = []
    if ("email" in changes or "password" in changes) and (
        body.current_password is None
        or not await resources.passwords.verify(account.password_hash, body.current_password)
    ):
        raise HTTPException(403, "current_password is required and must be right.")
    if body.email is not None and body.email.lower() != account.email:
        email = body.email.lower()
        if await session.scalar(select(Account.id).where(Account.email == email)) is not None:
            raise HTTPException(409, "An account with this email already exists.")
        account.email = email
        changed.append("email")
    if body.display_name is not None:
        account.display_name = body.display_name
        changed.append("display_name")
    if body.password is not None:
        account.password_hash = await resources.passwords.hash(body.password)
        changed.append("password")
    if changed:
        account.updated_at = utcnow()
        details: dict[str, object] = {"fields": changed}
        try:
            # Inside the try: this statement autoflushes the account, where a concurrent
            # change to the same email fails.
            if "password" in changed:
                details["tokens_revoked"] = await _revoke_other_tokens(session, caller)
            record(
                session, "account.updated", subject=account.id, actor=account.id,
                ip=client_ip(request), details=details,
            )
            await session.commit()
        except IntegrityError:
            await session.rollback()
            raise HTTPException(409, "An account with this email already exists.") from None
    return account


async def _revoke_other_tokens(session: Session, caller: Caller) -> int:
    """A password is changed because someone else may know it, and may hold a token made with
    it: every other live token of the account goes. The caller's own stays, so the change
    does not log out the person who made it."""
    now = utcnow()
    revoked = cast(
        "CursorResult[Any]",
        await session.execute(
            update(Token)
            .where(
                Token.account_id == caller.account_id, Token.id != caller.token_id,
                Token.revoked_at.is_(None), Token.expires_at > now,
            )
            .values(revoked_at=now)
        ),
    )
    return int(revoked.rowcount or 0)


# --- GDPR: access and portability, erasure (stalwart.ops.gdpr) -------------------------------


@router.get(
    "/export",
    response_model=AccountExport,
    responses=errors(401),
    summary="Download every piece of personal data held on you (JSON)",
)
async def export_me(
    request: Request, response: Response, caller: Caller, session: Session
) -> AccountExport:
    document = await export_account(
        session, caller.account_id, actor=caller.account_id, ip=client_ip(request)
    )
    if document is None:  # erased between token lookup and now
        raise invalid_token()
    response.headers["Content-Disposition"] = (
        f'attachment; filename="stalwart-export-{caller.account_id}.json"'
    )
    response.headers["Cache-Control"] = "no-store"
    return document


@router.delete(
    "",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=errors(400, 401, 403, 413, 415, 422),
    summary="Erase your account and all your data, for good (password required)",
)
async def erase_me(
    body: AccountErase, request: Request, caller: Caller, session: Session, resources: Res
) -> Response:
    account = await _load(session, caller)
    # The same per-account budget as logins: a stolen token cannot guess the password here.
    await resources.check_login_budget(account.email, request)
    if not await resources.passwords.verify(account.password_hash, body.current_password):
        record(
            session, "account.erase_refused", subject=account.id, actor=account.id,
            ip=client_ip(request),
        )
        await session.commit()
        raise HTTPException(403, "current_password is required and must be right.")
    if await erase_account(session, resources.settings, account.id, actor=None, reason="self-service") is None:
        raise invalid_token()  # a concurrent request erased it: this token died with it
    await resources.invalidate_notes(account.id)  # no cached copy of their notes outlives them
    return Response(status_code=204)
