"""OWASP API1 (broken object-level authorization): account B cannot touch account A's notes.

Every attempt is a 404 problem identical to the one for an id that does not exist (a 403 would
confirm the note exists), and the database holds exactly what it held before.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from tests.conftest import Account, signup
from tests.security.helpers import db_snapshot, problem_sans_ids

pytestmark = pytest.mark.anyio


async def _note(client: httpx.AsyncClient, who: Account, **body: Any) -> dict[str, Any]:
    payload = {"title": "alice's secret", "body": "<p>private</p>", "tags": ["private"], **body}
    r = await client.post("/api/v1/notes", json=payload, headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _assert_not_found(r: httpx.Response, detail: str = "No such note.") -> None:
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert problem_sans_ids(r) == {
        "type": "/problems/not-found",
        "title": "Not Found",
        "status": 404,
        "detail": detail,
    }


async def test_other_account_cannot_read_change_or_delete_a_note(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, bob: Account
) -> None:
    note = await _note(client, alice)
    # A's own read warms the server-side note cache: B must not be served from it either.
    assert (await client.get(f"/api/v1/notes/{note['id']}", headers=alice.headers)).status_code == 200
    before = await db_snapshot(app)
    url = f"/api/v1/notes/{note['id']}"
    attempts = [
        await client.get(url, headers=bob.headers),
        # A conditional read with A's ETag must not turn into a 304 that confirms the note.
        await client.get(url, headers={**bob.headers, "If-None-Match": '"v1"'}),
        await client.get(url, headers={**bob.headers, "If-None-Match": "*"}),
        await client.patch(url, json={"title": "pwned"}, headers=bob.headers),
        await client.patch(url, json={"body": "x"}, headers={**bob.headers, "If-Match": '"v1"'}),
        await client.patch(url, json={"tags": ["pwned"]}, headers={**bob.headers, "If-Match": "*"}),
        await client.delete(url, headers=bob.headers),
        await client.delete(url, headers={**bob.headers, "If-Match": '"v1"'}),
        # The trash endpoints only reach trashed notes, and only one's own.
        await client.post(f"/api/v1/trash/{note['id']}/restore", headers=bob.headers),
        await client.delete(f"/api/v1/trash/{note['id']}", headers=bob.headers),
    ]
    for r in attempts[:-2]:
        _assert_not_found(r)
    for r in attempts[-2:]:
        _assert_not_found(r, "No such note in your trash.")
    assert await db_snapshot(app) == before
    # A still sees the note unchanged.
    r = await client.get(url, headers=alice.headers)
    assert r.status_code == 200
    assert r.json() == note


async def test_other_account_cannot_restore_or_purge_a_trashed_note(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, bob: Account
) -> None:
    note = await _note(client, alice)
    assert (await client.delete(f"/api/v1/notes/{note['id']}", headers=alice.headers)).status_code == 204
    before = await db_snapshot(app)
    trashed = [n for n in before["notes"] if n["id"] == note["id"]]
    assert trashed[0]["deleted_at"] is not None
    for r in (
        await client.post(f"/api/v1/trash/{note['id']}/restore", headers=bob.headers),
        await client.delete(f"/api/v1/trash/{note['id']}", headers=bob.headers),
    ):
        _assert_not_found(r, "No such note in your trash.")
    # Nor through the live-note endpoints.
    for r in (
        await client.get(f"/api/v1/notes/{note['id']}", headers=bob.headers),
        await client.patch(f"/api/v1/notes/{note['id']}", json={"title": "x"}, headers=bob.headers),
    ):
        _assert_not_found(r)
    assert await db_snapshot(app) == before
    r = await client.get("/api/v1/trash", headers=bob.headers)
    assert r.status_code == 200
    assert r.json() == {"data": [], "next": None}
    r = await client.get("/api/v1/trash", headers=alice.headers)
    assert [n["id"] for n in r.json()["data"]] == [note["id"]]


async def test_404_for_another_accounts_note_is_the_404_for_a_missing_one(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    """No oracle: status, headers that matter and body are the same, existing or not."""
    note = await _note(client, alice)
    missing = str(uuid.uuid4())
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"title": "x"}),
        ("DELETE", "", None),
    ):
        theirs = await client.request(
            method, f"/api/v1/notes/{note['id']}{suffix}", json=body, headers=bob.headers
        )
        nothing = await client.request(
            method, f"/api/v1/notes/{missing}{suffix}", json=body, headers=bob.headers
        )
        assert theirs.status_code == nothing.status_code == 404
        assert problem_sans_ids(theirs) == problem_sans_ids(nothing)
        assert "etag" not in theirs.headers
        assert theirs.headers["content-length"] == nothing.headers["content-length"]


async def test_lists_filters_and_search_never_show_another_accounts_notes(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    tag = f"t{uuid.uuid4().hex[:8]}"
    mine = [await _note(client, alice, title=f"alpha {i}", tags=[tag]) for i in range(3)]
    bobs = await _note(client, bob, title="bob's own", tags=["other"])
    for query in ("", f"?tag={tag}", "?q=alpha", "?q=secret", "?tag=private", "?limit=100"):
        r = await client.get(f"/api/v1/notes{query}", headers=bob.headers)
        assert r.status_code == 200, query
        ids = [n["id"] for n in r.json()["data"]]
        assert not set(ids) & {n["id"] for n in mine}, query
    r = await client.get("/api/v1/notes", headers=bob.headers)
    assert [n["id"] for n in r.json()["data"]] == [bobs["id"]]
    r = await client.get(f"/api/v1/notes?tag={tag}", headers=alice.headers)
    assert len(r.json()["data"]) == 3


async def test_a_cursor_from_another_account_pages_only_ones_own_notes(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    for i in range(3):
        await _note(client, alice, title=f"a{i}")
    bobs = await _note(client, bob, title="b")
    r = await client.get("/api/v1/notes?limit=1", headers=alice.headers)
    next_url = r.json()["next"]
    assert next_url is not None
    r = await client.get(next_url, headers=bob.headers)
    assert r.status_code == 200
    assert [n["id"] for n in r.json()["data"]] in ([], [bobs["id"]])
    # A forged cursor naming A's note id does not reach it either.
    forged = base64.urlsafe_b64encode(
        orjson.dumps(["9999-01-01T00:00:00+00:00", "ffffffff-ffff-4fff-bfff-ffffffffffff"])
    ).decode().rstrip("=")
    r = await client.get(f"/api/v1/notes?cursor={forged}&limit=100", headers=bob.headers)
    assert [n["id"] for n in r.json()["data"]] == [bobs["id"]]


async def test_other_account_cannot_read_an_account(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    r = await client.get(f"/api/v1/accounts/{alice.id}", headers=bob.headers)
    _assert_not_found(r, "No such account.")
    nothing = await client.get(f"/api/v1/accounts/{uuid.uuid4()}", headers=bob.headers)
    assert problem_sans_ids(r) == problem_sans_ids(nothing)
    assert (await client.get(f"/api/v1/accounts/{alice.id}", headers=alice.headers)).status_code == 200


async def test_export_holds_only_ones_own_data(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    note = await _note(client, alice)
    r = await client.get("/api/v1/me/export", headers=bob.headers)
    assert r.status_code == 200
    assert note["id"] not in r.text
    assert alice.email not in r.text
    assert alice.id not in r.text


async def test_ids_are_random_uuid4(client: httpx.AsyncClient, alice: Account) -> None:
    notes = [await _note(client, alice, title=f"n{i}") for i in range(5)]
    other = await signup(client, "carol")
    ids = [n["id"] for n in notes] + [alice.id, other.id]
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 4, value
        assert str(parsed) == value
    assert len(set(ids)) == len(ids)
    # Consecutive ids share no counter: no common prefix beyond chance.
    prefixes = {value[:8] for value in ids}
    assert len(prefixes) == len(ids)
