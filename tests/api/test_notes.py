"""Notes over HTTP: CRUD, pagination, filters, owner-only access (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from stalwart.api import notes as notes_api
from stalwart.data.models import Note, NoteTag
from tests.api.races import hold_together
from tests.conftest import Account

pytestmark = pytest.mark.anyio


async def _create(client: httpx.AsyncClient, who: Account, **body: object) -> dict[str, object]:
    payload = {"title": "t", "body": "", "tags": [], **body}
    r = await client.post("/api/v1/notes", json=payload, headers=who.headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def _count_notes(app: object, account_id: str) -> int:
    db = app.state.resources.db  # type: ignore[attr-defined]
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(Note).where(Note.account_id == account_id)))


async def test_create_returns_201_location_and_the_note(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.post(
        "/api/v1/notes",
        json={"title": "  Groceries ", "body": "milk", "tags": ["Home", "home", "food"]},
        headers=alice.headers,
    )
    assert r.status_code == 201
    note = r.json()
    assert r.headers["location"] == f"/api/v1/notes/{note['id']}"
    assert note["title"] == "Groceries"
    assert note["tags"] == ["home", "food"]
    assert note["version"] == 1
    assert uuid.UUID(note["id"]).version == 4
    assert set(note) == {"id", "title", "body", "tags", "created_at", "updated_at", "version"}
    r = await client.get(f"/api/v1/notes/{note['id']}", headers=alice.headers)
    assert r.status_code == 200
    assert r.json() == note


async def test_body_html_is_sanitized_before_storing(client: httpx.AsyncClient, alice: Account, app: object) -> None:
    note = await _create(
        client, alice,
        body='<p onclick="x()">hi <a href="javascript:alert(1)">l</a><script>alert(1)</script></p>',
    )
    assert note["body"] == '<p>hi <a rel="noopener noreferrer">l</a></p>'
    db = app.state.resources.db  # type: ignore[attr-defined]
    async with db.session() as s:
        stored = await s.scalar(select(Note.body).where(Note.id == note["id"]))
    assert stored == note["body"]


async def test_list_paginates_with_cursor_and_next_link(client: httpx.AsyncClient, alice: Account) -> None:
    ids = [(await _create(client, alice, title=f"n{i}"))["id"] for i in range(5)]
    seen: list[str] = []
    url: str | None = "/api/v1/notes?limit=2"
    pages = 0
    while url:
        r = await client.get(url, headers=alice.headers)
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"data", "next"}
        seen += [n["id"] for n in body["data"]]
        url = body["next"]
        pages += 1
    assert pages == 3
    assert seen == list(reversed(ids))


async def test_list_filters_by_tag_and_searches_title(client: httpx.AsyncClient, alice: Account) -> None:
    a = await _create(client, alice, title="Weekly plan", tags=["work"])
    await _create(client, alice, title="Holiday 100%", tags=["home"])
    r = await client.get("/api/v1/notes?tag=work", headers=alice.headers)
    assert [n["id"] for n in r.json()["data"]] == [a["id"]]
    r = await client.get("/api/v1/notes?q=WEEK", headers=alice.headers)
    assert [n["id"] for n in r.json()["data"]] == [a["id"]]
    r = await client.get("/api/v1/notes?q=%25", headers=alice.headers)  # a literal %, not a wildcard
    assert [n["title"] for n in r.json()["data"]] == ["Holiday 100%"]


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=abc", "cursor=%21%21"])
async def test_list_rejects_bad_paging(client: httpx.AsyncClient, alice: Account, query: str) -> None:
    r = await client.get(f"/api/v1/notes?{query}", headers=alice.headers)
    assert r.status_code in (400, 422)
    assert r.headers["content-type"] == "application/problem+json"


async def test_patch_changes_fields_and_bumps_version(client: httpx.AsyncClient, alice: Account) -> None:
    note = await _create(client, alice, title="old", tags=["a"])
    r = await client.patch(
        f"/api/v1/notes/{note['id']}", json={"title": "new", "tags": ["b"]}, headers=alice.headers
    )
    assert r.status_code == 200
    assert r.json()["title"] == "new"
    assert r.json()["tags"] == ["b"]
    assert r.json()["version"] == 2
    r = await client.get("/api/v1/notes?tag=a", headers=alice.headers)
    assert r.json()["data"] == []


async def test_concurrent_tag_patches_one_wins_the_others_get_409(
    client: httpx.AsyncClient, alice: Account, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    note = await _create(client, alice, title="shared", tags=["start"])
    # Every request holds version 1 before any of them writes.
    hold_together(monkeypatch, notes_api, "_owned")
    responses = await asyncio.gather(
        *(
            client.patch(f"/api/v1/notes/{note['id']}", json={"tags": [f"u{i}"]}, headers=alice.headers)
            for i in range(3)
        )
    )

    assert sorted(r.status_code for r in responses) == [200, 409, 409]
    (winner,) = [r.json() for r in responses if r.status_code == 200]
    for r in responses:
        if r.status_code == 409:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["detail"] == "The note was changed by another request; fetch it again."
    async with app.state.resources.db.session() as s:
        stored = await s.scalar(select(Note).where(Note.id == note["id"]))
        tag_rows = (await s.scalars(select(NoteTag.tag).where(NoteTag.note_id == note["id"]))).all()
    assert stored is not None
    assert (stored.version, stored.tags) == (2, winner["tags"])
    assert list(tag_rows) == winner["tags"]


@pytest.mark.parametrize(
    "payload", [{}, {"title": None}, {"body": None}, {"tags": None}, {"title": None, "body": None, "tags": None}]
)
async def test_patch_with_only_nulls_changes_nothing(
    client: httpx.AsyncClient, alice: Account, app: FastAPI, payload: dict[str, object]
) -> None:
    note = await _create(client, alice, title="same", body="same", tags=["a"])
    etag = (await client.get(f"/api/v1/notes/{note['id']}", headers=alice.headers)).headers["etag"]
    r = await client.patch(f"/api/v1/notes/{note['id']}", json=payload, headers=alice.headers)
    assert r.status_code == 200
    assert r.json() == note
    assert r.headers["etag"] == etag
    async with app.state.resources.db.session() as s:
        stored = await s.scalar(select(Note).where(Note.id == note["id"]))
        tag_rows = (await s.scalars(select(NoteTag.tag).where(NoteTag.note_id == note["id"]))).all()
    assert stored is not None
    assert (stored.title, stored.body, stored.tags, stored.version) == ("same", "same", ["a"], 1)
    assert list(tag_rows) == ["a"]
    # What the OpenAPI document promises: each field may be null, and null leaves it as it is.
    spec = (await client.get("/openapi.json")).json()
    for field in ("title", "body", "tags"):
        schema = spec["components"]["schemas"]["NoteUpdate"]["properties"][field]
        assert {"type": "null"} in schema["anyOf"]
        assert schema["description"].startswith("Absent or null: left as it is.")


async def test_owner_fields_cannot_be_mass_assigned(client: httpx.AsyncClient, alice: Account, bob: Account) -> None:
    r = await client.post(
        "/api/v1/notes", json={"title": "x", "account_id": bob.id}, headers=alice.headers
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["pointer"] == "/account_id"
    note = await _create(client, alice)
    r = await client.patch(
        f"/api/v1/notes/{note['id']}", json={"account_id": bob.id, "version": 9}, headers=alice.headers
    )
    assert r.status_code == 422


async def test_other_accounts_notes_are_404_and_untouched(
    client: httpx.AsyncClient, alice: Account, bob: Account, app: object
) -> None:
    note = await _create(client, alice, title="secret", tags=["x"])
    nid = note["id"]
    assert (await client.get(f"/api/v1/notes/{nid}", headers=bob.headers)).status_code == 404
    r = await client.patch(f"/api/v1/notes/{nid}", json={"title": "pwned"}, headers=bob.headers)
    assert r.status_code == 404
    assert (await client.delete(f"/api/v1/notes/{nid}", headers=bob.headers)).status_code == 404
    r = await client.get("/api/v1/notes", headers=bob.headers)
    assert r.json() == {"data": [], "next": None}
    r = await client.get("/api/v1/notes?tag=x", headers=bob.headers)
    assert r.json()["data"] == []
    # unchanged in the database
    r = await client.get(f"/api/v1/notes/{nid}", headers=alice.headers)
    assert r.json()["title"] == "secret"
    assert await _count_notes(app, alice.id) == 1


async def test_unknown_note_is_404_problem(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.get(f"/api/v1/notes/{uuid.uuid4()}", headers=alice.headers)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "No such note."


async def test_delete_removes_the_note(client: httpx.AsyncClient, alice: Account, app: object) -> None:
    note = await _create(client, alice, tags=["t"])
    r = await client.delete(f"/api/v1/notes/{note['id']}", headers=alice.headers)
    assert r.status_code == 204
    assert (await client.get(f"/api/v1/notes/{note['id']}", headers=alice.headers)).status_code == 404


@pytest.mark.parametrize(
    "payload",
    [
        {"title": ""},
        {"title": "x" * 201},
        {"title": "a\x00b"},
        {"title": "ok\n"},  # control characters are refused before the strip could hide them
        {"title": "ok", "tags": ["x" * 51]},
        {"title": "ok", "tags": [f"t{i}" for i in range(21)]},
        {"title": "ok", "body": "x" * 100_001},
        {"title": 5},
        {"title": "ok", "extra": 1},
    ],
)
async def test_invalid_note_is_422_and_writes_nothing(
    client: httpx.AsyncClient, alice: Account, app: object, payload: dict[str, object]
) -> None:
    r = await client.post("/api/v1/notes", json=payload, headers=alice.headers)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"]
    assert await _count_notes(app, alice.id) == 0


async def test_unpaired_surrogate_in_a_body_is_422_and_changes_nothing(
    client: httpx.AsyncClient, alice: Account, app: FastAPI
) -> None:
    # Raw JSON: the escape must reach the server as written (httpx's encoder would refuse it).
    headers = {**alice.headers, "content-type": "application/json"}
    r = await client.post("/api/v1/notes", content=b'{"title": "ok", "body": "\\ud800x"}', headers=headers)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert [e["pointer"] for e in r.json()["errors"]] == ["/body"]
    assert await _count_notes(app, alice.id) == 0

    note = await _create(client, alice, title="kept", body="kept")
    r = await client.patch(f"/api/v1/notes/{note['id']}", content=b'{"body": "\\udfff"}', headers=headers)
    assert r.status_code == 422
    assert [e["pointer"] for e in r.json()["errors"]] == ["/body"]
    async with app.state.resources.db.session() as s:
        stored = await s.scalar(select(Note).where(Note.id == note["id"]))
    assert stored is not None
    assert (stored.body, stored.version) == ("kept", 1)


async def test_a_body_that_escaping_makes_too_long_is_422_and_what_is_stored_can_be_sent_back(
    client: httpx.AsyncClient, alice: Account, app: FastAPI
) -> None:
    # 30,000 "<" become 120,000 characters of "&lt;": past the limit once stored.
    r = await client.post("/api/v1/notes", json={"title": "t", "body": "<" * 30_000}, headers=alice.headers)
    assert r.status_code == 422
    assert r.json()["errors"] == [
        {"pointer": "/body", "detail": "The body is longer than 100000 characters once its HTML is escaped"}
    ]
    assert await _count_notes(app, alice.id) == 0
    note = await _create(client, alice, title="t", body="if a < b && c > d " * 2_000)
    r = await client.patch(f"/api/v1/notes/{note['id']}", json={"body": "<" * 30_000}, headers=alice.headers)
    assert r.status_code == 422
    # What was stored (escaped) is valid input as it is: a client can send back what it read.
    stored = (await client.get(f"/api/v1/notes/{note['id']}", headers=alice.headers)).json()["body"]
    assert stored.startswith("if a &lt; b &amp;&amp; c &gt; d")
    r = await client.patch(f"/api/v1/notes/{note['id']}", json={"body": stored}, headers=alice.headers)
    assert (r.status_code, r.json()["body"]) == (200, stored)


@pytest.mark.parametrize("reference", ["&#x1b;[2J", "&#1;", "&#x7f;", "&#11;", "&#X1B;"])
async def test_a_control_character_written_as_a_reference_is_422(
    client: httpx.AsyncClient, alice: Account, app: FastAPI, reference: str
) -> None:
    r = await client.post("/api/v1/notes", json={"title": "t", "body": f"x {reference} y"}, headers=alice.headers)
    assert r.status_code == 422
    assert [e["pointer"] for e in r.json()["errors"]] == ["/body"]
    assert await _count_notes(app, alice.id) == 0


async def test_tabs_and_line_breaks_written_as_references_are_kept(client: httpx.AsyncClient, alice: Account) -> None:
    note = await _create(client, alice, title="t", body="a&#9;b&#10;c")
    assert note["body"] == "a\tb\nc"


@pytest.mark.parametrize(
    ("title", "message"),
    [
        ("   ", "String should have at least 1 character"),
        ("\u00a0 \u3000", "String should have at least 1 character"),
        ("x" * 201, "String should have at most 200 characters"),
        (" " + "x" * 201 + " ", "String should have at most 200 characters"),
    ],
)
async def test_blank_or_long_title_is_422_counted_after_stripping(
    client: httpx.AsyncClient, alice: Account, app: FastAPI, title: str, message: str
) -> None:
    r = await client.post("/api/v1/notes", json={"title": title}, headers=alice.headers)
    assert r.status_code == 422
    assert r.json()["errors"] == [{"pointer": "/title", "detail": message}]
    assert await _count_notes(app, alice.id) == 0

    note = await _create(client, alice, title="kept")
    r = await client.patch(f"/api/v1/notes/{note['id']}", json={"title": title}, headers=alice.headers)
    assert r.status_code == 422
    assert r.json()["errors"] == [{"pointer": "/title", "detail": message}]
    async with app.state.resources.db.session() as s:
        stored = await s.scalar(select(Note).where(Note.id == note["id"]))
    assert stored is not None
    assert (stored.title, stored.version) == ("kept", 1)


async def test_title_length_is_counted_after_stripping(client: httpx.AsyncClient, alice: Account) -> None:
    note = await _create(client, alice, title="  " + "x" * 200 + "  ")
    assert note["title"] == "x" * 200


async def test_notes_require_a_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/notes")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="stalwart"'
    r = await client.get("/api/v1/notes", headers={"Authorization": "Bearer stw_nope"})
    assert r.status_code == 401


