"""Registration and account lookup."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from stalwart.data.models import Account as AccountRow
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
        ({"email": "a@example.com", "password": "long enough pw", "display_name": "a\nb"}, "/display_name"),
        ({"email": "a@example.com", "password": "long enough pw"}, "/display_name"),
    ],
)
async def test_invalid_registration_is_422_with_pointer(
    client: httpx.AsyncClient, payload: dict[str, str], pointer: str
) -> None:
    r = await client.post("/api/v1/accounts", json=payload)
    assert r.status_code == 422
    problem = r.json()
    assert problem["status"] == 422
    assert [e["pointer"] for e in problem["errors"]] == [pointer]
    # the submitted values are never echoed back (one may be a password)
    assert "long enough pw" not in r.text


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
