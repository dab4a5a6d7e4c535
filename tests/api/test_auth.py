"""Log in and log out: opaque tokens, stored hashed, revocable, expiring."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from stalwart.data.models import AuditEvent, Token
from stalwart.data.types import utcnow
from tests.conftest import Account

pytestmark = pytest.mark.anyio


async def test_login_returns_token_stored_only_as_sha256(
    client: httpx.AsyncClient, alice: Account, app: object
) -> None:
    r = await client.post("/api/v1/auth/tokens", json={"email": alice.email, "password": alice.password})
    assert r.status_code == 201
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["token"].startswith("stw_")
    assert r.headers["location"] == "/api/v1/auth/tokens/current"
    assert r.headers["cache-control"] == "no-store"
    db = app.state.resources.db  # type: ignore[attr-defined]
    async with db.session() as s:
        hashes = set((await s.scalars(select(Token.token_hash).where(Token.account_id == alice.id))).all())
    assert hashlib.sha256(body["token"].encode()).hexdigest() in hashes
    assert body["token"] not in hashes


@pytest.mark.parametrize("which", ["password", "email"])
async def test_bad_credentials_are_401_with_one_message(
    client: httpx.AsyncClient, alice: Account, app: object, which: str
) -> None:
    creds = {"email": alice.email, "password": alice.password}
    creds[which] = "wrong-password-x" if which == "password" else "nobody@example.com"
    r = await client.post("/api/v1/auth/tokens", json=creds)
    assert r.status_code == 401
    assert r.json()["detail"] == "The email or password is wrong."
    db = app.state.resources.db  # type: ignore[attr-defined]
    async with db.session() as s:
        events = (await s.scalars(select(AuditEvent.event).where(AuditEvent.event == "auth.login_failed"))).all()
    assert len(events) == 1


async def test_logout_revokes_the_token(client: httpx.AsyncClient, alice: Account) -> None:
    assert (await client.get("/api/v1/me", headers=alice.headers)).status_code == 200
    r = await client.delete("/api/v1/auth/tokens/current", headers=alice.headers)
    assert r.status_code == 204
    r = await client.get("/api/v1/me", headers=alice.headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"


async def test_expired_token_is_refused(client: httpx.AsyncClient, alice: Account, app: object) -> None:
    db = app.state.resources.db  # type: ignore[attr-defined]
    async with db.session() as s:
        await s.execute(
            update(Token).where(Token.account_id == alice.id).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await s.commit()
    r = await client.get("/api/v1/me", headers=alice.headers)
    assert r.status_code == 401


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 500, "bearer stw_notreal", "Token abc"],
)
async def test_malformed_authorization_is_401(client: httpx.AsyncClient, header: str) -> None:
    r = await client.get("/api/v1/me", headers={"Authorization": header})
    assert r.status_code == 401
