"""Backups over HTTP: administrators start one (409 while one runs), list and download them."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from stalwart.app import create_app
from stalwart.ops.admins import create_or_promote_admin
from stalwart.ops.scheduler import Lifecycle
from stalwart.settings import Settings
from tests.conftest import Account, make_settings, signup

pytestmark = pytest.mark.anyio


async def _admin(app: FastAPI, who: Account) -> None:
    await create_or_promote_admin(app.state.settings, who.email, "Admin", who.password)


def _lifecycle(app: FastAPI) -> Lifecycle:
    lifecycle = app.state.resources.lifecycle
    assert isinstance(lifecycle, Lifecycle)
    return lifecycle


async def _wait_idle(app: FastAPI) -> None:
    task = _lifecycle(app).backup_task
    assert task is not None
    await asyncio.wait_for(asyncio.shield(task), timeout=60)


@pytest.fixture
async def second_instance(settings: Settings) -> AsyncIterator[FastAPI]:
    """Another app object on the same database and data_dir: another service instance."""
    other = create_app(settings)
    async with other.router.lifespan_context(other):
        yield other


async def test_backups_are_for_administrators_only(client: httpx.AsyncClient, bob: Account) -> None:
    for method, url in (
        ("GET", "/api/v1/admin/backups"),
        ("POST", "/api/v1/admin/backups"),
        ("GET", "/api/v1/admin/backups/stalwart-20250101T000000000000Z-abcdef.tar"),
    ):
        assert (await client.request(method, url)).status_code == 401
        r = await client.request(method, url, headers=bob.headers)
        assert r.status_code == 403, url


async def test_start_list_and_download_a_backup(client: httpx.AsyncClient, app: FastAPI, alice: Account) -> None:
    await _admin(app, alice)
    await client.post("/api/v1/notes", json={"title": "keep me"}, headers=alice.headers)
    assert (await client.get("/api/v1/admin/backups", headers=alice.headers)).json() == {
        "data": [],
        "next": None,
    }
    r = await client.post("/api/v1/admin/backups", headers=alice.headers)
    assert r.status_code == 202
    assert r.headers["location"] == "/api/v1/admin/backups"
    assert r.json()["status"] == "running"
    await _wait_idle(app)

    r = await client.get("/api/v1/admin/backups", headers=alice.headers)
    assert r.status_code == 200
    (item,) = r.json()["data"]
    assert set(item) == {
        "name",
        "size",
        "created_at",
        "verified",
        "verified_at",
        "encrypted",
        "schema_revision",
        "row_counts",
    }
    assert item["verified"] is True
    assert item["encrypted"] is False
    assert item["schema_revision"] == "0003"
    assert item["row_counts"]["notes"] == 1
    path = app.state.settings.effective_backup_dir / item["name"]
    assert item["size"] == path.stat().st_size

    r = await client.get(f"/api/v1/admin/backups/{item['name']}", headers=alice.headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-tar"
    assert r.headers["content-disposition"] == f'attachment; filename="{item["name"]}"'
    assert r.headers["cache-control"] == "no-store"
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(path.read_bytes()).digest()

    r = await client.get("/api/v1/admin/audit?limit=200", headers=alice.headers)
    events = {(e["event"], e["actor"]) for e in r.json()["data"]}
    assert ("backup.started", alice.id) in events
    assert ("backup.created", alice.id) in events
    assert ("backup.downloaded", alice.id) in events


@pytest.mark.parametrize(
    "name",
    [
        "..%2F..%2Fstalwart.db",
        "stalwart.db",
        "stalwart-20250101T000000000000Z-abcdef.tar",
        "stalwart-20250101T000000000000Z-abcdef.tar.verified.json",
        "%2Fetc%2Fpasswd",
    ],
)
async def test_download_serves_only_archives(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, name: str
) -> None:
    await _admin(app, alice)
    r = await client.get(f"/api/v1/admin/backups/{name}", headers=alice.headers)
    assert r.status_code == 404


async def test_a_second_backup_while_one_runs_is_409_on_every_instance(
    client: httpx.AsyncClient, app: FastAPI, second_instance: FastAPI, alice: Account
) -> None:
    await _admin(app, alice)
    gate = asyncio.Event()
    ran: list[str] = []

    async def slow_backup(actor: str) -> None:
        ran.append(actor)
        await gate.wait()

    _lifecycle(app)._backup = slow_backup  # type: ignore[method-assign]
    r = await client.post("/api/v1/admin/backups", headers=alice.headers)
    assert r.status_code == 202
    r = await client.post("/api/v1/admin/backups", headers=alice.headers)
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "A backup is already running; try again when it has finished."
    transport = httpx.ASGITransport(app=second_instance, client=("203.0.113.8", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as other:
        r = await other.post("/api/v1/admin/backups", headers=alice.headers)
        assert r.status_code == 409  # the lock is cluster-wide, not per process
        gate.set()
        await _wait_idle(app)
        assert ran == [alice.id]
        _lifecycle(second_instance)._backup = slow_backup  # type: ignore[method-assign]
        r = await other.post("/api/v1/admin/backups", headers=alice.headers)
        assert r.status_code == 202
        await _wait_idle(second_instance)
    assert ran == [alice.id, alice.id]


async def test_openapi_documents_the_backup_endpoints(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    start = spec["paths"]["/api/v1/admin/backups"]["post"]
    assert set(start["responses"]) >= {"202", "401", "403", "409"}
    download = spec["paths"]["/api/v1/admin/backups/{name}"]["get"]
    assert "application/x-tar" in download["responses"]["200"]["content"]


async def test_starting_a_backup_while_the_redis_lock_is_down_is_503(tmp_path: Path, database_url: str) -> None:
    # Nothing listens on port 1: the Redis holding the job locks is down.
    settings = make_settings(
        tmp_path, database_url=database_url, redis_url="redis://127.0.0.1:1/0", scheduler_lock="redis",
        redis_timeout=0.3,
    )
    application = create_app(settings)
    transport = httpx.ASGITransport(app=application)
    async with application.router.lifespan_context(application), httpx.AsyncClient(
        transport=transport, base_url="http://t"
    ) as c:
        admin = await signup(c, "admin")
        await _admin(application, admin)
        r = await c.post("/api/v1/admin/backups", headers=admin.headers)
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] == "2"
        assert r.json()["request_id"]
        assert "redis" not in r.text.lower()
        assert not _lifecycle(application).backup_running
