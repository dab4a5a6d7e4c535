"""The caller's own account: read and rectify."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from stalwart.data.models import AuditEvent, Token
from tests.conftest import Account

pytestmark = pytest.mark.anyio


async def test_get_me(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.get("/api/v1/me", headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["id"] == alice.id
    assert "password_hash" not in r.json()


async def test_patch_display_name(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.patch("/api/v1/me", json={"display_name": "Alice L."}, headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["display_name"] == "Alice L."


@pytest.mark.parametrize(
    ("display_name", "message"),
    [
        ("   ", "String should have at least 1 character"),
        ("x" * 101, "String should have at most 100 characters"),
    ],
)
async def test_blank_or_long_display_name_is_422_and_changes_nothing(
    client: httpx.AsyncClient, alice: Account, display_name: str, message: str
) -> None:
    r = await client.patch("/api/v1/me", json={"display_name": display_name}, headers=alice.headers)
    assert r.status_code == 422
    assert r.json()["errors"] == [{"pointer": "/display_name", "detail": message}]
    assert (await client.get("/api/v1/me", headers=alice.headers)).json()["display_name"] == "alice"


async def test_display_name_is_stored_stripped(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.patch("/api/v1/me", json={"display_name": " " + "y" * 100 + " "}, headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["display_name"] == "y" * 100


@pytest.mark.parametrize(
    "payload", [{"display_name": None}, {"email": None}, {"password": None}, {"email": None, "password": None}]
)
async def test_null_fields_are_left_as_they_are(
    client: httpx.AsyncClient, alice: Account, app: FastAPI, payload: dict[str, object]
) -> None:
    before = (await client.get("/api/v1/me", headers=alice.headers)).json()
    # No current_password: a null email or password is no change, so none is needed.
    r = await client.patch("/api/v1/me", json=payload, headers=alice.headers)
    assert r.status_code == 200
    assert r.json() == before
    async with app.state.resources.db.session() as s:
        updates = await s.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.event == "account.updated")
        )
    assert updates == 0
    r = await client.post("/api/v1/auth/tokens", json={"email": alice.email, "password": alice.password})
    assert r.status_code == 201


async def test_email_change_needs_current_password(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.patch("/api/v1/me", json={"email": "new@example.com"}, headers=alice.headers)
    assert r.status_code == 403
    r = await client.patch(
        "/api/v1/me",
        json={"email": "new@example.com", "current_password": alice.password},
        headers=alice.headers,
    )
    assert r.status_code == 200
    assert r.json()["email"] == "new@example.com"


async def test_password_change_then_login_with_new(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.patch(
        "/api/v1/me",
        json={"password": "a brand new password", "current_password": alice.password},
        headers=alice.headers,
    )
    assert r.status_code == 200
    r = await client.post("/api/v1/auth/tokens", json={"email": alice.email, "password": alice.password})
    assert r.status_code == 401
    r = await client.post(
        "/api/v1/auth/tokens", json={"email": alice.email, "password": "a brand new password"}
    )
    assert r.status_code == 201


async def _login(client: httpx.AsyncClient, who: Account) -> dict[str, str]:
    r = await client.post("/api/v1/auth/tokens", json={"email": who.email, "password": who.password})
    assert r.status_code == 201
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def _updates(app: FastAPI) -> list[dict[str, object]]:
    async with app.state.resources.db.session() as s:
        events = await s.scalars(
            select(AuditEvent).where(AuditEvent.event == "account.updated").order_by(AuditEvent.at)
        )
        return [e.details for e in events]


async def test_password_change_revokes_every_other_token(
    client: httpx.AsyncClient, alice: Account, bob: Account, app: FastAPI
) -> None:
    others = [await _login(client, alice), await _login(client, alice)]
    # Other changes, and a refused password change, revoke nothing.
    r = await client.patch(
        "/api/v1/me",
        json={"email": "renamed@example.com", "display_name": "A", "current_password": alice.password},
        headers=alice.headers,
    )
    assert r.status_code == 200
    r = await client.patch(
        "/api/v1/me", json={"password": "a brand new password", "current_password": "wrong password"},
        headers=alice.headers,
    )
    assert r.status_code == 403
    assert [(await client.get("/api/v1/me", headers=h)).status_code for h in others] == [200, 200]

    r = await client.patch(
        "/api/v1/me", json={"password": "a brand new password", "current_password": alice.password},
        headers=alice.headers,
    )
    assert r.status_code == 200
    assert (await client.get("/api/v1/me", headers=alice.headers)).status_code == 200  # the caller's own
    for headers in others:
        r = await client.get("/api/v1/me", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
    assert (await client.get("/api/v1/me", headers=bob.headers)).status_code == 200
    async with app.state.resources.db.session() as s:
        tokens = (await s.scalars(select(Token).where(Token.account_id == alice.id))).all()
    assert sorted(t.revoked_at is None for t in tokens) == [False, False, True]
    assert await _updates(app) == [
        {"fields": ["email", "display_name"]},
        {"fields": ["password"], "tokens_revoked": 2},
    ]


async def test_email_taken_is_409(client: httpx.AsyncClient, alice: Account, bob: Account) -> None:
    r = await client.patch(
        "/api/v1/me",
        json={"email": bob.email, "current_password": alice.password},
        headers=alice.headers,
    )
    assert r.status_code == 409


async def test_role_cannot_be_changed_through_me(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.patch("/api/v1/me", json={"role": "admin"}, headers=alice.headers)
    assert r.status_code == 422
    assert (await client.get("/api/v1/me", headers=alice.headers)).json()["role"] == "user"


async def test_a_login_checked_against_the_old_password_gets_no_token_once_it_changed(
    client: httpx.AsyncClient, alice: Account, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwords = app.state.resources.passwords
    verify = passwords.verify
    checked, changed = asyncio.Event(), asyncio.Event()

    async def login_waits_for_the_change(hashed: str | None, password: str) -> bool:
        ok = await verify(hashed, password)
        if not checked.is_set():  # the login: right with the old password, then held
            checked.set()
            await changed.wait()
        return bool(ok)

    monkeypatch.setattr(passwords, "verify", login_waits_for_the_change)

    async def change_then_release() -> httpx.Response:
        await checked.wait()
        try:
            return await client.patch(
                "/api/v1/me", json={"password": "a brand new password", "current_password": alice.password},
                headers=alice.headers,
            )
        finally:
            changed.set()

    login, change = await asyncio.gather(
        client.post("/api/v1/auth/tokens", json={"email": alice.email, "password": alice.password}),
        change_then_release(),
    )
    assert change.status_code == 200
    assert login.status_code == 401
    assert login.headers["content-type"] == "application/problem+json"
    async with app.state.resources.db.session() as s:
        live = (await s.scalars(select(Token).where(Token.account_id == alice.id, Token.revoked_at.is_(None)))).all()
    assert len(live) == 1  # the caller's own, nothing issued against the old password
