"""GDPR over HTTP: export everything held on the caller; erase the account with its password."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from stalwart.api import me as me_api
from stalwart.data.models import AuditEvent
from stalwart.ops import erasure_ledger
from stalwart.ops.gdpr import pseudonym
from tests.api.races import hold_together
from tests.conftest import Account
from tests.ops.helpers import remains_of

pytestmark = pytest.mark.anyio


async def _activity(client: httpx.AsyncClient, who: Account) -> list[str]:
    """Notes (one trashed), a failed login, a second token revoked: data in every table."""
    ids = []
    for i, tags in enumerate((["home"], ["work", "x"], [])):
        r = await client.post(
            "/api/v1/notes", json={"title": f"n{i}", "body": f"<p>b{i}</p>", "tags": tags}, headers=who.headers
        )
        ids.append(r.json()["id"])
    await client.delete(f"/api/v1/notes/{ids[0]}", headers=who.headers)
    await client.post("/api/v1/auth/tokens", json={"email": who.email, "password": "wrong password!"})
    r = await client.post("/api/v1/auth/tokens", json={"email": who.email, "password": who.password})
    second = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await client.delete("/api/v1/auth/tokens/current", headers=second)).status_code == 204
    return ids


async def _events(app: FastAPI) -> list[AuditEvent]:
    async with app.state.resources.db.session() as s:
        return list((await s.scalars(select(AuditEvent).order_by(AuditEvent.at))).all())


async def test_export_holds_every_piece_of_personal_data(
    client: httpx.AsyncClient, alice: Account, bob: Account, app: FastAPI
) -> None:
    note_ids = await _activity(client, alice)
    await client.post("/api/v1/notes", json={"title": "bob's"}, headers=bob.headers)

    r = await client.get("/api/v1/me/export", headers=alice.headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-disposition"] == f'attachment; filename="stalwart-export-{alice.id}.json"'
    assert r.headers["cache-control"] == "no-store"
    doc = r.json()
    assert set(doc) == {"format", "exported_at", "account", "notes", "tokens", "audit_events"}
    assert doc["format"] == "stalwart-export/1"
    assert doc["account"]["id"] == alice.id
    assert doc["account"]["email"] == alice.email
    assert doc["account"]["last_login_at"] is not None
    assert sorted(n["id"] for n in doc["notes"]) == sorted(note_ids)
    trashed = [n for n in doc["notes"] if n["deleted_at"] is not None]
    assert [n["id"] for n in trashed] == [note_ids[0]]  # the trash is personal data too
    assert len(doc["tokens"]) == 2
    assert all(set(t) == {"id", "created_at", "expires_at", "revoked_at"} for t in doc["tokens"])
    assert sum(t["revoked_at"] is not None for t in doc["tokens"]) == 1
    events = {e["event"] for e in doc["audit_events"]}
    assert {"account.registered", "auth.login", "auth.login_failed", "token.created", "token.revoked"} <= events
    assert all(e["ip"] in (None, "203.0.113.0") for e in doc["audit_events"])
    text = r.text
    for secret in (alice.password, alice.token, "password_hash", "token_hash", "$argon2"):
        assert secret not in text
    assert bob.id not in text
    assert "bob's" not in text
    # The export itself is audited.
    exported = [e for e in await _events(app) if e.event == "account.exported"]
    assert len(exported) == 1
    assert (exported[0].subject, exported[0].actor, exported[0].ip) == (alice.id, alice.id, "203.0.113.0")
    assert exported[0].details == {"notes": 3, "tokens": 2, "audit_events": len(doc["audit_events"])}


async def test_export_needs_a_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/me/export")
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"current_password": ""}, 422),
        ({"current_password": "not the password"}, 403),
        ({"current_password": "x", "extra": 1}, 422),
    ],
)
async def test_erasure_needs_the_right_password_and_keeps_everything_otherwise(
    client: httpx.AsyncClient, alice: Account, app: FastAPI, body: dict[str, object], status: int
) -> None:
    await _activity(client, alice)
    before = await remains_of(app.state.settings, alice.id, alice.email)
    r = await client.request("DELETE", "/api/v1/me", json=body, headers=alice.headers)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"
    assert (await client.get("/api/v1/me", headers=alice.headers)).status_code == 200
    after = await remains_of(app.state.settings, alice.id, alice.email)
    assert {t: len(rows) for t, rows in after.items() if t != "audit_events"} == {
        t: len(rows) for t, rows in before.items() if t != "audit_events"
    }
    if status == 403:
        assert (await _events(app))[-1].event == "account.erase_refused"


async def test_erasure_leaves_nothing_of_the_account_in_any_table(
    client: httpx.AsyncClient, alice: Account, bob: Account, app: FastAPI
) -> None:
    settings = app.state.settings
    await _activity(client, alice)
    await _activity(client, bob)
    present = await remains_of(settings, alice.id, alice.email)
    assert set(present) == {"accounts", "tokens", "notes", "note_tags", "audit_events"}

    r = await client.request("DELETE", "/api/v1/me", json={"current_password": alice.password}, headers=alice.headers)
    assert r.status_code == 204
    assert r.content == b""

    # Table by table, by id and by email: nothing.
    assert await remains_of(settings, alice.id, alice.email) == {}
    # The token died with the account.
    assert (await client.get("/api/v1/me", headers=alice.headers)).status_code == 401
    # The audit trail stays, pseudonymized, without addresses.
    alias = pseudonym(settings, alice.id)
    events = await _events(app)
    theirs = [e for e in events if alias in (e.subject, e.actor)]
    assert {"account.registered", "auth.login", "auth.login_failed", "token.revoked", "account.erased"} <= {
        e.event for e in theirs
    }
    assert all(e.ip is None for e in theirs)
    erased = theirs[-1]
    assert (erased.event, erased.subject, erased.actor) == ("account.erased", alias, alias)
    assert erased.details == {"reason": "self-service", "notes": 3, "tokens": 2}
    # Bob is untouched.
    bob_rows = await remains_of(settings, bob.id, bob.email)
    assert len(bob_rows["notes"]) == 3
    assert (await client.get("/api/v1/me", headers=bob.headers)).status_code == 200
    # The ledger names the account for later restores, never its email.
    (entry,) = erasure_ledger.read(settings)
    assert entry.account_id == alice.id
    assert alice.email not in erasure_ledger.ledger_path(settings).read_text()
    # The email is free again: the person may come back as a new account.
    r = await client.post(
        "/api/v1/accounts", json={"email": alice.email, "password": alice.password, "display_name": "again"}
    )
    assert r.status_code == 201
    assert r.json()["id"] != alice.id


async def test_concurrent_erasures_erase_once_and_the_others_get_401(
    client: httpx.AsyncClient, alice: Account, bob: Account, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _activity(client, alice)
    # Every request has loaded the account and checked the password before any erases.
    hold_together(monkeypatch, me_api, "erase_account", before=True)
    responses = await asyncio.gather(
        *(
            client.request("DELETE", "/api/v1/me", json={"current_password": alice.password}, headers=alice.headers)
            for _ in range(3)
        )
    )

    assert sorted(r.status_code for r in responses) == [204, 401, 401]
    for r in responses:
        if r.status_code == 401:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"] == 'Bearer realm="stalwart"'
            assert r.json()["detail"] == "The bearer token is invalid, expired or revoked."
    settings = app.state.settings
    assert await remains_of(settings, alice.id, alice.email) == {}
    alias = pseudonym(settings, alice.id)
    erased = [e for e in await _events(app) if e.event == "account.erased"]
    assert [(e.subject, e.details) for e in erased] == [
        (alias, {"reason": "self-service", "notes": 3, "tokens": 2})
    ]
    assert [entry.account_id for entry in erasure_ledger.read(settings)] == [alice.id]
    assert (await client.get("/api/v1/me", headers=bob.headers)).status_code == 200


async def test_export_after_erasure_is_impossible(client: httpx.AsyncClient, alice: Account) -> None:
    await client.request("DELETE", "/api/v1/me", json={"current_password": alice.password}, headers=alice.headers)
    assert (await client.get("/api/v1/me/export", headers=alice.headers)).status_code == 401


async def test_openapi_documents_export_and_erasure(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    export = spec["paths"]["/api/v1/me/export"]["get"]
    assert export["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AccountExport"
    }
    erase = spec["paths"]["/api/v1/me"]["delete"]
    assert set(erase["responses"]) >= {"204", "401", "403", "422", "429"}
    schema = json.dumps(spec["components"]["schemas"]["AccountErase"])
    assert "current_password" in schema
