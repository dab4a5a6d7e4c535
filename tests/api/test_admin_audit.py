"""The audit trail over HTTP: administrators only, paginated, no secrets, anonymized IPs."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from stalwart.ops.admins import create_or_promote_admin
from tests.conftest import Account

pytestmark = pytest.mark.anyio


async def _admin(app: FastAPI, who: Account) -> None:
    await create_or_promote_admin(app.state.settings, who.email, "Admin", who.password)


async def test_audit_is_for_administrators_only(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, bob: Account
) -> None:
    assert (await client.get("/api/v1/admin/audit")).status_code == 401
    r = await client.get("/api/v1/admin/audit", headers=bob.headers)
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    await _admin(app, alice)
    assert (await client.get("/api/v1/admin/audit", headers=alice.headers)).status_code == 200


async def test_audit_records_security_events_without_secrets(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, bob: Account
) -> None:
    await client.post("/api/v1/auth/tokens", json={"email": bob.email, "password": "a wrong guess"})
    await client.post("/api/v1/auth/tokens", json={"email": "nobody@example.com", "password": "x"})
    await client.delete("/api/v1/auth/tokens/current", headers=bob.headers)
    await _admin(app, alice)
    r = await client.get("/api/v1/admin/audit?limit=200", headers=alice.headers)
    assert r.status_code == 200
    events = r.json()["data"]
    assert set(events[0]) == {"id", "at", "event", "subject", "actor", "ip", "details"}
    seen = {(e["event"], e["subject"]) for e in events}
    for expected in [
        ("account.registered", bob.id),
        ("auth.login", bob.id),
        ("token.created", bob.id),
        ("auth.login_failed", bob.id),
        ("auth.login_failed", None),
        ("token.revoked", bob.id),
        ("admin.granted", alice.id),
    ]:
        assert expected in seen, expected
    text = r.text
    for secret in (
        bob.password,
        bob.token,
        alice.password,
        alice.token,
        "a wrong guess",
        "nobody@example.com",
        bob.email,
        "$argon2",
    ):
        assert secret not in text
    assert {e["ip"] for e in events} <= {"203.0.113.0", None}  # /24, never the full address
    assert "203.0.113.7" not in text


async def test_audit_pages_newest_first_and_filters(client: httpx.AsyncClient, app: FastAPI, alice: Account) -> None:
    for _ in range(4):
        await client.post("/api/v1/auth/tokens", json={"email": alice.email, "password": alice.password})
    await _admin(app, alice)
    seen: list[dict[str, object]] = []
    url: str | None = "/api/v1/admin/audit?limit=3&event=token.created"
    pages = 0
    while url:
        r = await client.get(url, headers=alice.headers)
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"data", "next"}
        seen += body["data"]
        url = body["next"]
        pages += 1
        if url:
            assert "event=token.created" in url
    assert pages == 2
    assert len(seen) == 5  # one from signing up, four here
    assert {e["event"] for e in seen} == {"token.created"}
    ats = [str(e["at"]) for e in seen]
    assert ats == sorted(ats, reverse=True)
    assert len({e["id"] for e in seen}) == 5

    r = await client.get(f"/api/v1/admin/audit?subject={alice.id}&limit=200", headers=alice.headers)
    assert {e["subject"] for e in r.json()["data"]} == {alice.id}
    # Reading the trail is itself recorded.
    r = await client.get("/api/v1/admin/audit?event=audit.read&limit=200", headers=alice.headers)
    reads = r.json()["data"]
    assert len(reads) >= pages + 1
    assert {e["actor"] for e in reads} == {alice.id}


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "cursor=%21%21", "event=DROP%20TABLE"])
async def test_audit_rejects_bad_parameters(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, query: str
) -> None:
    await _admin(app, alice)
    r = await client.get(f"/api/v1/admin/audit?{query}", headers=alice.headers)
    assert r.status_code in (400, 422)
    assert r.headers["content-type"] == "application/problem+json"
