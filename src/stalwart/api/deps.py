"""Dependencies shared by the routers: resources, the database session, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException

from stalwart.credentials import hash_token
from stalwart.data.reads import Principal
from stalwart.resources import Resources

__all__ = ["Admin", "Caller", "Session", "client_ip", "get_resources", "invalid_token"]

_bearer = HTTPBearer(auto_error=False, description="Opaque token from POST /api/v1/auth/tokens")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="stalwart"'}


def invalid_token() -> HTTPException:
    """The 401 for a token that is not, or no longer, valid."""
    return HTTPException(401, "The bearer token is invalid, expired or revoked.", headers=_CHALLENGE)


async def get_resources(request: Request) -> Resources:
    # `async def` although it never awaits: FastAPI runs a plain `def` dependency in the
    # thread pool, a thread hop that cost ~140 us of CPU on every API request.
    resources: Resources = request.app.state.resources
    return resources


async def get_session(
    resources: Annotated[Resources, Depends(get_resources)],
) -> AsyncIterator[AsyncSession]:
    async with resources.db.session() as session:
        yield session


async def get_principal(
    request: Request,
    resources: Annotated[Resources, Depends(get_resources)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise HTTPException(401, "A bearer token is required.", headers=_CHALLENGE)
    token = credentials.credentials
    if len(token) > 200:
        raise invalid_token()
    principal = await resources.db.reads.principal(hash_token(token))
    if principal is None:
        raise invalid_token()
    request.state.account_id = principal.account_id
    request.state.authenticated = True
    return principal


async def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if principal.role != "admin":
        raise HTTPException(403, "This operation is for administrators.")
    return principal


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


Session = Annotated[AsyncSession, Depends(get_session)]
Caller = Annotated[Principal, Depends(get_principal)]
Admin = Annotated[Principal, Depends(require_admin)]
Res = Annotated[Resources, Depends(get_resources)]
