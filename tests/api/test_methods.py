"""api/methods.py: HEAD wherever GET works; a 405 names every method the resource allows."""

from __future__ import annotations

import httpx
import orjson
import pytest

from stalwart.policies import request_log
from tests.conftest import signup

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/api/v1/notes", "GET, HEAD, POST"),
        ("PUT", "/api/v1/notes/0b7a1c3e-0000-4000-8000-000000000000", "GET, HEAD, PATCH, DELETE"),
        ("PUT", "/api/v1/me", "GET, HEAD, PATCH, DELETE"),
        ("GET", "/api/v1/accounts", "POST"),
        ("HEAD", "/api/v1/auth/tokens", "POST"),
        ("POST", "/openapi.json", "GET, HEAD"),
        ("DELETE", "/health/live", "GET, HEAD"),
    ],
)
async def test_405_allows_every_method_of_every_matching_route(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    r = await client.request(method, path)
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    assert r.headers["content-type"] == "application/problem+json"
    if method != "HEAD":
        assert r.json()["request_id"] == r.headers["x-request-id"]


async def test_head_answers_as_get_without_the_body(client: httpx.AsyncClient) -> None:
    account = await signup(client, "head")
    r = await client.post("/api/v1/notes", json={"title": "hello", "body": "x" * 300}, headers=account.headers)
    assert r.status_code == 201
    identity = {**account.headers, "Accept-Encoding": "identity"}
    for path in (f"/api/v1/notes/{r.json()['id']}", "/api/v1/notes", "/api/v1/me", "/docs", "/health"):
        get = await client.get(path, headers=identity)
        head = await client.head(path, headers=identity)
        assert (head.status_code, get.status_code) == (200, 200), path
        assert head.content == b""
        for name in ("content-type", "content-length", "etag", "cache-control"):
            assert head.headers.get(name) == get.headers.get(name), (path, name)
        assert int(head.headers["content-length"]) == len(get.content) > 0
    # Compressed, the coding is the same; the compressed length is not known without the body.
    get = await client.get("/api/v1/notes", headers={**account.headers, "Accept-Encoding": "br"})
    head = await client.head("/api/v1/notes", headers={**account.headers, "Accept-Encoding": "br"})
    assert head.headers["content-encoding"] == get.headers["content-encoding"] == "br"
    assert head.content == b""


async def test_head_is_logged_as_head_with_its_route(
    client: httpx.AsyncClient, capfd: pytest.CaptureFixture[str]
) -> None:
    account = await signup(client, "headlog")
    request_log.ACCESS_LOG.flush()
    capfd.readouterr()
    r = await client.head("/api/v1/notes", headers=account.headers)
    assert r.status_code == 200
    request_log.ACCESS_LOG.flush()
    out = capfd.readouterr().out
    (line,) = [orjson.loads(raw) for raw in out.splitlines() if raw.startswith('{"timestamp"')]
    assert (line["http.request.method"], line["http.route"], line["http.response.status_code"]) == (
        "HEAD",
        "/api/v1/notes",
        200,
    )
    assert line["http.response.body.size"] == 0


async def test_reads_recorded_in_the_audit_trail_have_no_head(client: httpx.AsyncClient) -> None:
    """A HEAD would run the export (or the download, or the audit read) and record a read
    that sent nothing: those answer HEAD with 405, and their Allow does not offer it."""
    account = await signup(client, "noexporthead")
    head = await client.head("/api/v1/me/export", headers=account.headers)
    assert head.status_code == 405
    assert head.headers["allow"] == "GET"
    put = await client.put("/api/v1/me/export", headers=account.headers)
    assert put.headers["allow"] == "GET"
    # Only a GET leaves a record: the second export shows the first one, and nothing else.
    assert (await client.get("/api/v1/me/export", headers=account.headers)).status_code == 200
    second = await client.get("/api/v1/me/export", headers=account.headers)
    events = [e["event"] for e in second.json()["audit_events"]]
    assert events.count("account.exported") == 1


async def test_static_files_answer_head_themselves(client: httpx.AsyncClient) -> None:
    """Static files do HEAD on their own (no body read, no Range on HEAD): not routed as GET."""
    full = await client.get("/static/monitor/monitor.css", headers={"Accept-Encoding": "identity"})
    assert full.status_code == 200
    head = await client.head(
        "/static/monitor/monitor.css", headers={"Range": "bytes=0-9", "Accept-Encoding": "identity"}
    )
    assert head.status_code == 200
    assert "content-range" not in head.headers
    assert head.headers["content-length"] == str(len(full.content))


async def test_head_counts_against_the_get_routes_budget(client: httpx.AsyncClient) -> None:
    """Monitoring routes have their own budget; a HEAD there is a GET there, not a general hit."""
    get = await client.get("/metrics")
    head = await client.head("/metrics")
    assert get.headers["ratelimit-policy"] == head.headers["ratelimit-policy"]
    assert get.headers["ratelimit-policy"] != (await client.get("/api/v1/notes")).headers["ratelimit-policy"]
