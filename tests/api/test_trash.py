"""Soft delete and the trash: DELETE moves to trash, restore brings back, purge removes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from stalwart.api import trash as trash_api
from stalwart.app import create_app
from stalwart.data.models import Note, NoteTag
from stalwart.data.types import utcnow
from stalwart.ops.retention import purge
from tests.api.races import hold_together
from tests.conftest import Account, make_settings

pytestmark = pytest.mark.anyio


async def _note(client: httpx.AsyncClient, who: Account, title: str = "t", **extra: object) -> str:
    r = await client.post("/api/v1/notes", json={"title": title, **extra}, headers=who.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _rows(app: FastAPI, model: type, note_id: str) -> int:
    db = app.state.resources.db
    column = model.id if model is Note else model.note_id  # type: ignore[attr-defined]
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(column == note_id)))


async def test_delete_moves_the_note_to_the_trash(client: httpx.AsyncClient, alice: Account, app: FastAPI) -> None:
    note_id = await _note(client, alice, "groceries", tags=["home"])
    r = await client.delete(f"/api/v1/notes/{note_id}", headers=alice.headers)
    assert r.status_code == 204
    assert (await client.get(f"/api/v1/notes/{note_id}", headers=alice.headers)).status_code == 404
    assert (await client.get("/api/v1/notes", headers=alice.headers)).json()["data"] == []
    assert (await client.get("/api/v1/notes?tag=home", headers=alice.headers)).json()["data"] == []
    assert (await client.delete(f"/api/v1/notes/{note_id}", headers=alice.headers)).status_code == 404

    r = await client.get("/api/v1/trash", headers=alice.headers)
    assert r.status_code == 200
    page = r.json()
    assert page["next"] is None
    (item,) = page["data"]
    assert item["id"] == note_id
    assert item["title"] == "groceries"
    assert item["tags"] == ["home"]
    deleted = datetime.fromisoformat(item["deleted_at"])
    assert abs((utcnow() - deleted).total_seconds()) < 60
    assert datetime.fromisoformat(item["purge_after"]) - deleted == timedelta(days=30)
    assert await _rows(app, Note, note_id) == 1  # still stored: it is in the trash


async def test_restore_brings_the_note_back_as_a_new_version(client: httpx.AsyncClient, alice: Account) -> None:
    note_id = await _note(client, alice, "draft", tags=["w"])
    await client.delete(f"/api/v1/notes/{note_id}", headers=alice.headers)
    r = await client.post(f"/api/v1/trash/{note_id}/restore", headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["version"] == 3  # 1 created, 2 moved to the trash, 3 restored
    assert r.headers["etag"] == '"v3"'  # as every other write of one note
    assert r.json()["title"] == "draft"
    assert set(r.json()) == {"id", "title", "body", "tags", "created_at", "updated_at", "version"}
    r = await client.get(f"/api/v1/notes/{note_id}", headers=alice.headers)
    assert r.status_code == 200
    assert [n["id"] for n in (await client.get("/api/v1/notes?tag=w", headers=alice.headers)).json()["data"]] == [
        note_id
    ]
    assert (await client.get("/api/v1/trash", headers=alice.headers)).json() == {"data": [], "next": None}
    r = await client.post(f"/api/v1/trash/{note_id}/restore", headers=alice.headers)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


async def test_someone_elses_trash_is_invisible(client: httpx.AsyncClient, alice: Account, bob: Account) -> None:
    note_id = await _note(client, alice)
    await client.delete(f"/api/v1/notes/{note_id}", headers=alice.headers)
    assert (await client.get("/api/v1/trash", headers=bob.headers)).json()["data"] == []
    assert (await client.post(f"/api/v1/trash/{note_id}/restore", headers=bob.headers)).status_code == 404
    assert (await client.delete(f"/api/v1/trash/{note_id}", headers=bob.headers)).status_code == 404
    assert len((await client.get("/api/v1/trash", headers=alice.headers)).json()["data"]) == 1


async def test_delete_from_trash_removes_for_good_now(client: httpx.AsyncClient, alice: Account, app: FastAPI) -> None:
    note_id = await _note(client, alice, tags=["x", "y"])
    live_id = await _note(client, alice)
    assert (await client.delete(f"/api/v1/trash/{live_id}", headers=alice.headers)).status_code == 404
    await client.delete(f"/api/v1/notes/{note_id}", headers=alice.headers)
    assert (await client.delete(f"/api/v1/trash/{note_id}", headers=alice.headers)).status_code == 204
    assert await _rows(app, Note, note_id) == 0
    assert await _rows(app, NoteTag, note_id) == 0
    assert await _rows(app, Note, live_id) == 1


async def test_concurrent_deletes_from_trash_one_204_then_404s(
    client: httpx.AsyncClient, alice: Account, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    note_id = await _note(client, alice, tags=["x", "y"])
    await client.delete(f"/api/v1/notes/{note_id}", headers=alice.headers)
    # Every request has found the note in the trash before any of them deletes it.
    hold_together(monkeypatch, trash_api, "_trashed")
    responses = await asyncio.gather(
        *(client.delete(f"/api/v1/trash/{note_id}", headers=alice.headers) for _ in range(3))
    )

    assert sorted(r.status_code for r in responses) == [204, 404, 404]
    for r in responses:
        if r.status_code == 404:
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["detail"] == "No such note in your trash."
    assert await _rows(app, Note, note_id) == 0
    assert await _rows(app, NoteTag, note_id) == 0


async def test_trash_pages_most_recently_deleted_first(client: httpx.AsyncClient, alice: Account) -> None:
    ids = [await _note(client, alice, f"n{i}") for i in range(5)]
    for note_id in ids:
        await client.delete(f"/api/v1/notes/{note_id}", headers=alice.headers)
    seen: list[str] = []
    url: str | None = "/api/v1/trash?limit=2"
    pages = 0
    while url:
        r = await client.get(url, headers=alice.headers)
        assert r.status_code == 200
        seen += [n["id"] for n in r.json()["data"]]
        url = r.json()["next"]
        pages += 1
    assert pages == 3
    assert seen == list(reversed(ids))


@pytest.mark.parametrize("cursor", ["%21%21", "WyIyMDI0LTAxLTAxVDAwOjAwOjAwIiwieCJd"])
async def test_bad_cursor_is_400(client: httpx.AsyncClient, alice: Account, cursor: str) -> None:
    r = await client.get(f"/api/v1/trash?cursor={cursor}", headers=alice.headers)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"


async def test_purge_empties_the_trash_after_the_retention_period(
    client: httpx.AsyncClient, alice: Account, app: FastAPI
) -> None:
    old = await _note(client, alice, "old", tags=["t"])
    recent = await _note(client, alice, "recent")
    for note_id in (old, recent):
        await client.delete(f"/api/v1/notes/{note_id}", headers=alice.headers)
    resources = app.state.resources
    report = await purge(resources.db, resources.settings, now=utcnow() + timedelta(days=30, hours=1))
    assert report.trashed_notes == 2
    assert await _rows(app, Note, old) == 0
    assert await _rows(app, NoteTag, old) == 0
    r = await client.post(f"/api/v1/trash/{old}/restore", headers=alice.headers)
    assert r.status_code == 404


async def test_trash_needs_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/trash")).status_code == 401
    r = await client.post(f"/api/v1/trash/{uuid.uuid4()}/restore")
    assert r.status_code == 401


async def test_a_trash_kept_forever_has_no_purge_date(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url=database_url, retention_trash_days=0)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, client=("203.0.113.7", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            r = await client.post("/api/v1/accounts", json={"email": "k@example.com", "password": "kept password 1",
                                                             "display_name": "K"})
            assert r.status_code == 201
            token = (await client.post("/api/v1/auth/tokens", json={"email": "k@example.com",
                                                                     "password": "kept password 1"})).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            note_id = (await client.post("/api/v1/notes", json={"title": "t"}, headers=headers)).json()["id"]
            assert (await client.delete(f"/api/v1/notes/{note_id}", headers=headers)).status_code == 204
            (item,) = (await client.get("/api/v1/trash", headers=headers)).json()["data"]
    assert item["purge_after"] is None
