"""OWASP API3 (mass assignment): internal fields in a request body are refused with 422 on
every write endpoint, and nothing changes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import Account
from tests.security.helpers import audit_events, db_snapshot

pytestmark = pytest.mark.anyio

# Server-owned fields, with values an attacker would want.
FORBIDDEN: dict[str, Any] = {
    "role": "admin",
    "id": "00000000-0000-4000-8000-000000000000",
    "account_id": "00000000-0000-4000-8000-000000000001",
    "owner": "00000000-0000-4000-8000-000000000001",
    "version": 999,
    "created_at": "2000-01-01T00:00:00Z",
    "updated_at": "2000-01-01T00:00:00Z",
    "deleted_at": None,
    "token_hash": "0" * 64,
    "password_hash": "$argon2id$v=19$m=8,t=1,p=1$AAAA$AAAA",
    "last_login_at": "2000-01-01T00:00:00Z",
    "is_admin": True,
    "expires_at": "2999-01-01T00:00:00Z",
}


async def _note(client: httpx.AsyncClient, who: Account) -> dict[str, Any]:
    r = await client.post("/api/v1/notes", json={"title": "mine"}, headers=who.headers)
    assert r.status_code == 201
    return r.json()  # type: ignore[no-any-return]


async def _assert_refused_each(
    client: httpx.AsyncClient,
    app: FastAPI,
    method: str,
    url: str,
    valid: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> None:
    """`valid` is accepted on its own; each forbidden field added to it gives 422 naming it."""
    before = await db_snapshot(app)
    for field, value in FORBIDDEN.items():
        r = await client.request(method, url, json={**valid, field: value}, headers=headers)
        assert r.status_code == 422, (method, url, field, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        errors = r.json()["errors"]
        assert {"pointer": f"/{field}", "detail": "Extra inputs are not permitted"} in errors, errors
        assert await db_snapshot(app) == before, (method, url, field)


async def test_register_refuses_internal_fields(client: httpx.AsyncClient, app: FastAPI) -> None:
    valid = {"email": "mass@example.com", "password": "long-enough-pw", "display_name": "M"}
    await _assert_refused_each(client, app, "POST", "/api/v1/accounts", valid)
    r = await client.post("/api/v1/accounts", json=valid)
    assert r.status_code == 201
    assert r.json()["role"] == "user"


async def test_login_refuses_internal_fields(
    client: httpx.AsyncClient, app: FastAPI, alice: Account
) -> None:
    valid = {"email": alice.email, "password": alice.password}
    logins = await audit_events(app, "auth.login")
    await _assert_refused_each(client, app, "POST", "/api/v1/auth/tokens", valid)
    assert await audit_events(app, "auth.login") == logins


async def test_me_update_refuses_internal_fields(
    client: httpx.AsyncClient, app: FastAPI, alice: Account
) -> None:
    await _assert_refused_each(
        client, app, "PATCH", "/api/v1/me", {"display_name": "Alice 2"}, alice.headers
    )
    r = await client.get("/api/v1/me", headers=alice.headers)
    assert r.json()["role"] == "user"
    assert r.json()["id"] == alice.id


async def test_me_erase_refuses_internal_fields(
    client: httpx.AsyncClient, app: FastAPI, alice: Account
) -> None:
    # A wrong password keeps the valid body harmless; extra fields fail before it is checked.
    await _assert_refused_each(
        client, app, "DELETE", "/api/v1/me", {"current_password": "not-the-password"},
        alice.headers,
    )
    assert (await client.get("/api/v1/me", headers=alice.headers)).status_code == 200


async def test_note_create_refuses_internal_fields(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, bob: Account
) -> None:
    await _assert_refused_each(
        client, app, "POST", "/api/v1/notes", {"title": "t", "body": "b", "tags": ["x"]},
        bob.headers,
    )
    # Nothing was created for Bob, nor in Alice's name.
    for who in (alice, bob):
        r = await client.get("/api/v1/notes", headers=who.headers)
        assert r.json()["data"] == []


async def test_note_update_refuses_internal_fields(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, bob: Account
) -> None:
    note = await _note(client, alice)
    await _assert_refused_each(
        client, app, "PATCH", f"/api/v1/notes/{note['id']}", {"title": "changed"}, alice.headers
    )
    r = await client.get(f"/api/v1/notes/{note['id']}", headers=alice.headers)
    assert r.json() == note
    assert (await client.get(f"/api/v1/notes/{note['id']}", headers=bob.headers)).status_code == 404


async def test_bodies_sent_to_body_less_writes_change_nothing_they_should_not(
    client: httpx.AsyncClient, app: FastAPI, alice: Account
) -> None:
    """Endpoints without a request body ignore one: no field of it reaches the database."""
    note = await _note(client, alice)
    r = await client.request(
        "DELETE", f"/api/v1/notes/{note['id']}", json=FORBIDDEN, headers=alice.headers
    )
    assert r.status_code == 204
    r = await client.post(
        f"/api/v1/trash/{note['id']}/restore", json=FORBIDDEN, headers=alice.headers
    )
    assert r.status_code == 200
    restored = r.json()
    assert restored["id"] == note["id"]
    assert restored["version"] == note["version"] + 2  # delete + restore, not 999
    assert restored["created_at"] == note["created_at"]
    snapshot = await db_snapshot(app)
    row = next(n for n in snapshot["notes"] if n["id"] == note["id"])
    assert row["account_id"] == alice.id
    assert row["deleted_at"] is None
    account = next(a for a in snapshot["accounts"] if a["id"] == alice.id)
    assert account["role"] == "user"
    r = await client.post("/api/v1/admin/backups", json=FORBIDDEN, headers=alice.headers)
    assert r.status_code == 403


@pytest.mark.parametrize("field", ["email", "display_name", "title"])
async def test_type_confusion_is_refused(
    client: httpx.AsyncClient, alice: Account, field: str
) -> None:
    """Strict models: no coercion of numbers, lists or objects into strings."""
    url = "/api/v1/notes" if field == "title" else "/api/v1/me"
    method = "POST" if field == "title" else "PATCH"
    for value in (1, 1.5, True, ["x"], {"$ne": ""}):
        r = await client.request(method, url, json={field: value}, headers=alice.headers)
        assert r.status_code == 422, (field, value, r.text)
