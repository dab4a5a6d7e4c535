"""Operator endpoints are for the admin role only."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from stalwart.ops.admins import create_or_promote_admin
from tests.conftest import Account

pytestmark = pytest.mark.anyio


async def test_admin_accounts_requires_admin(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, bob: Account
) -> None:
    assert (await client.get("/api/v1/admin/accounts")).status_code == 401
    r = await client.get("/api/v1/admin/accounts", headers=alice.headers)
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    await create_or_promote_admin(app.state.settings, alice.email, "Alice", alice.password)
    r = await client.get("/api/v1/admin/accounts?limit=1", headers=alice.headers)
    assert r.status_code == 200
    page = r.json()
    assert len(page["data"]) == 1
    assert page["next"] is not None
    assert "@" not in page["next"]  # an opaque cursor, not the last email seen
    r = await client.get(page["next"], headers=alice.headers)
    assert len(r.json()["data"]) == 1
    assert r.json()["data"][0]["id"] != page["data"][0]["id"]
    bad = await client.get("/api/v1/admin/accounts?cursor=not-a-cursor", headers=alice.headers)
    assert (bad.status_code, bad.headers["content-type"]) == (400, "application/problem+json")
    emails = {alice.email, bob.email}
    assert "password_hash" not in r.text
    assert r.json()["data"][0]["email"] in emails
