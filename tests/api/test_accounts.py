"""Registration and account lookup."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from stalwart.data.models import Account as AccountRow
from stalwart.data.models import AuditEvent
from tests.api.races import hold_together
from tests.conftest import Account, signup

pytestmark = pytest.mark.anyio


async def test_register_returns_201_with_location_and_no_secrets(client: httpx.AsyncClient, app: object) -> None:
    r = await client.post(
        "/api/v1/accounts",
        json={"email": "Ann@Example.COM", "password": "correct horse battery", "display_name": "Ann"},
    )
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"id", "email", "display_name", "role", "created_at"}
    assert body["email"] == "ann@example.com"
    assert body["role"] == "user"
    assert r.headers["location"] == f"/api/v1/accounts/{body['id']}"
    db = app.state.resources.db  # type: ignore[attr-defined]
    async with db.session() as s:
        row = await s.scalar(select(AccountRow).where(AccountRow.id == body["id"]))
    assert row is not None
    assert row.password_hash.startswith("$argon2id$")
    assert "correct horse battery" not in row.password_hash


async def test_duplicate_email_is_409(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.post(
        "/api/v1/accounts",
        json={"email": alice.email.upper(), "password": "another password!", "display_name": "x"},
    )
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"


async def test_concurrent_registrations_of_one_email_make_one_account_and_409s(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every request is past the "email taken?" check before any of them inserts.
    hold_together(monkeypatch, app.state.resources.passwords, "hash")
    payload = {"email": "race@example.com", "password": "race password 12", "display_name": "R"}
    responses = await asyncio.gather(*(client.post("/api/v1/accounts", json=payload) for _ in range(3)))

    assert sorted(r.status_code for r in responses) == [201, 409, 409]
    for r in responses:
        if r.status_code == 409:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["detail"] == "An account with this email already exists."
            assert r.json()["request_id"]
    async with app.state.resources.db.session() as s:
        accounts = await s.scalar(
            select(func.count()).select_from(AccountRow).where(AccountRow.email == "race@example.com")
        )
        registered = await s.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.event == "account.registered")
        )
    assert (accounts, registered) == (1, 1)


async def test_role_cannot_be_self_assigned(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/accounts",
        json={"email": "e@example.com", "password": "long enough pw", "display_name": "e", "role": "admin"},
    )
    assert r.status_code == 422
    assert r.json()["errors"] == [{"pointer": "/role", "detail": "Extra inputs are not permitted"}]


@pytest.mark.parametrize(
    ("payload", "pointer"),
    [
        ({"email": "not-an-email", "password": "long enough pw", "display_name": "x"}, "/email"),
        ({"email": "a@example.com", "password": "short", "display_name": "x"}, "/password"),
        ({"email": "a@example.com", "password": "long enough pw", "display_name": ""}, "/display_name"),
        ({"email": "a@example.com", "password": "long enough pw", "display_name": "  "}, "/display_name"),
        ({"email": "a@example.com", "password": "long enough pw", "display_name": "a\nb"}, "/display_name"),
        ({"email": "a@example.com", "password": "long enough pw"}, "/display_name"),
    ],
)
async def test_invalid_registration_is_422_with_pointer(
    client: httpx.AsyncClient, app: FastAPI, payload: dict[str, str], pointer: str
) -> None:
    r = await client.post("/api/v1/accounts", json=payload)
    assert r.status_code == 422
    problem = r.json()
    assert problem["status"] == 422
    assert [e["pointer"] for e in problem["errors"]] == [pointer]
    # the submitted values are never echoed back (one may be a password)
    assert "long enough pw" not in r.text
    async with app.state.resources.db.session() as s:
        assert await s.scalar(select(func.count()).select_from(AccountRow)) == 0


async def test_get_account_self_only(client: httpx.AsyncClient, alice: Account, bob: Account) -> None:
    r = await client.get(f"/api/v1/accounts/{alice.id}", headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["email"] == alice.email
    r = await client.get(f"/api/v1/accounts/{alice.id}", headers=bob.headers)
    assert r.status_code == 404


async def test_signup_helper_makes_distinct_accounts(client: httpx.AsyncClient) -> None:
    a = await signup(client, "a")
    b = await signup(client, "b")
    assert a.id != b.id
    assert a.token != b.token
