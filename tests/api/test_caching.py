"""HTTP caching of API reads and the server-side cache: 304s, 412s, and no stale read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from stalwart.app import create_app
from stalwart.data.cache import CachedReads, RedisCache
from tests.conftest import REDIS_URL, Account, make_settings, signup

pytestmark = pytest.mark.anyio


async def test_note_etag_and_304(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.post("/api/v1/notes", json={"title": "a"}, headers=alice.headers)
    assert r.headers["etag"] == '"v1"'
    url = r.headers["location"]
    r = await client.get(url, headers=alice.headers)
    assert r.status_code == 200
    assert r.headers["etag"] == '"v1"'
    r = await client.get(url, headers={**alice.headers, "If-None-Match": '"v1"'})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == '"v1"'
    assert "Accept-Encoding" in r.headers["vary"]
    r = await client.get(url, headers={**alice.headers, "If-None-Match": 'W/"v0", "v9"'})
    assert r.status_code == 200


async def test_list_etag_changes_with_any_write(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.post("/api/v1/notes", json={"title": "a"}, headers=alice.headers)
    url = r.headers["location"]
    first = await client.get("/api/v1/notes", headers=alice.headers)
    etag = first.headers["etag"]
    r = await client.get("/api/v1/notes", headers={**alice.headers, "If-None-Match": etag})
    assert r.status_code == 304
    await client.patch(url, json={"title": "b"}, headers=alice.headers)
    r = await client.get("/api/v1/notes", headers={**alice.headers, "If-None-Match": etag})
    assert r.status_code == 200
    assert r.json()["data"][0]["title"] == "b"
    assert r.headers["etag"] != etag


async def test_if_match_prevents_lost_update(client: httpx.AsyncClient, alice: Account) -> None:
    r = await client.post("/api/v1/notes", json={"title": "base"}, headers=alice.headers)
    url, etag = r.headers["location"], r.headers["etag"]
    r = await client.patch(url, json={"title": "first"}, headers={**alice.headers, "If-Match": etag})
    assert r.status_code == 200
    assert r.headers["etag"] == '"v2"'
    r = await client.patch(url, json={"title": "second"}, headers={**alice.headers, "If-Match": etag})
    assert r.status_code == 412
    assert r.headers["content-type"] == "application/problem+json"
    r = await client.delete(url, headers={**alice.headers, "If-Match": etag})
    assert r.status_code == 412
    r = await client.get(url, headers=alice.headers)
    assert r.json()["title"] == "first"
    r = await client.delete(url, headers={**alice.headers, "If-Match": '"v2"'})
    assert r.status_code == 204


async def test_no_stale_read_after_write_in_process(client: httpx.AsyncClient, alice: Account, app: FastAPI) -> None:
    assert isinstance(app.state.resources.db.reads, CachedReads)
    r = await client.post("/api/v1/notes", json={"title": "one"}, headers=alice.headers)
    url = r.headers["location"]
    for title in ("two", "three", "four"):
        await client.get(url, headers=alice.headers)  # warm the cache
        await client.get("/api/v1/notes", headers=alice.headers)
        await client.patch(url, json={"title": title}, headers=alice.headers)
        assert (await client.get(url, headers=alice.headers)).json()["title"] == title
        listed = (await client.get("/api/v1/notes", headers=alice.headers)).json()["data"]
        assert [n["title"] for n in listed] == [title]
    await client.delete(url, headers=alice.headers)
    assert (await client.get(url, headers=alice.headers)).status_code == 404
    assert (await client.get("/api/v1/notes", headers=alice.headers)).json()["data"] == []


@pytest.fixture
async def two_instances(
    tmp_path: Path, database_url: str, redis_prefix: str
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    prefix = redis_prefix
    clients = []
    async with AsyncExitStack() as stack:
        for _ in range(2):
            settings = make_settings(
                tmp_path, database_url=database_url, redis_url=REDIS_URL,
                cache_key_prefix=prefix, rate_limit_key_prefix=prefix,
            )
            app = create_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            assert isinstance(app.state.resources.db.reads.cache, RedisCache)
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
            clients.append(await stack.enter_async_context(client))
        yield clients[0], clients[1]


async def test_no_stale_read_across_two_instances_sharing_redis(
    two_instances: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    one, two = two_instances
    alice = await signup(one, "alice")
    r = await one.post("/api/v1/notes", json={"title": "v1"}, headers=alice.headers)
    url = r.headers["location"]
    for i in range(2, 6):
        # both instances have the note cached...
        assert (await one.get(url, headers=alice.headers)).status_code == 200
        assert (await two.get(url, headers=alice.headers)).status_code == 200
        await two.get("/api/v1/notes", headers=alice.headers)
        # ...a write through one is read through the other at once
        writer, reader = (one, two) if i % 2 else (two, one)
        await writer.patch(url, json={"title": f"v{i}"}, headers=alice.headers)
        assert (await reader.get(url, headers=alice.headers)).json()["title"] == f"v{i}"
        listed = (await reader.get("/api/v1/notes", headers=alice.headers)).json()["data"]
        assert listed[0]["title"] == f"v{i}"
