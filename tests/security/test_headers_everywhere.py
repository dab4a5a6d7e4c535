"""The security header set on every route of the real app, errors included."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import signup
from tests.prepared_server import taking_prepared_fields
from tests.security.helpers import concrete_paths

pytestmark = [
    pytest.mark.anyio,
    # Headers do not depend on the database: SQLite only.
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

COMMON = {
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "origin-agent-cluster": "?1",
    "referrer-policy": "no-referrer",
    # env=test keeps helmet parity over plain HTTP; production sends it over HTTPS only.
    "strict-transport-security": "max-age=31536000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-dns-prefetch-control": "off",
    "x-download-options": "noopen",
    "x-permitted-cross-domain-policies": "none",
    "x-xss-protection": "0",
    "permissions-policy": (
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
        "microphone=(), payment=(), usb=(), interest-cohort=()"
    ),
}
JSON_SET = {
    **COMMON,
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
    "x-frame-options": "DENY",
}
DOCUMENT_SET = {
    **COMMON,
    "content-security-policy": (
        "default-src 'self';base-uri 'self';font-src 'self' https: data:;form-action 'self';"
        "frame-ancestors 'self';img-src 'self' data:;object-src 'none';script-src 'self';"
        "script-src-attr 'none';style-src 'self' https: 'unsafe-inline';"
        "upgrade-insecure-requests"
    ),
    "x-frame-options": "SAMEORIGIN",
}


@pytest.fixture(params=["fields", "prepared block"])
async def client(app: FastAPI, request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """Each test twice: under a plain ASGI server (the fields one by one) and under one that
    takes the policy's prepared fields as a block, as `stalwart serve` does."""
    served = app if request.param == "fields" else taking_prepared_fields(app)
    transport = httpx.ASGITransport(app=served, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def assert_security_headers(response: httpx.Response) -> None:
    label = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    is_json = media_type == "application/json" or media_type.endswith("+json") or not media_type
    expected = JSON_SET if is_json else DOCUMENT_SET
    actual = {name: response.headers.get(name) for name in expected}
    assert actual == expected, label
    assert "server" not in response.headers, label
    assert "x-powered-by" not in response.headers, label
    for name in expected:
        assert len(response.headers.get_list(name)) == 1, f"{label}: {name} repeated"


async def test_every_route_answers_get_with_the_header_set(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    paths = concrete_paths(app)
    assert "/api/v1/notes" in paths
    assert "/docs" in paths
    statuses = set()
    for path in paths:
        response = await client.get(path)
        statuses.add(response.status_code)
        assert_security_headers(response)
    # Anonymous GETs cover successes, 401s and 405s (POST-only routes).
    assert {200, 401, 405} <= statuses


async def test_every_route_authenticated(app: FastAPI, client: httpx.AsyncClient) -> None:
    account = await signup(client, "headers")
    for path in concrete_paths(app):
        response = await client.get(path, headers=account.headers)
        assert_security_headers(response)
        if path == "/api/v1/me":
            assert response.status_code == 200
            assert response.headers["cache-control"] == "no-store"


async def test_html_pages_get_the_document_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert_security_headers(response)
    # The page loads its scripts from 'self' only: no inline script for the CSP to allow.
    assert "<script>" not in response.text
    assert "script-src 'self';" in response.headers["content-security-policy"]


async def test_error_responses_get_the_header_set(client: httpx.AsyncClient) -> None:
    cases: list[tuple[int, httpx.Response]] = [
        (404, await client.get("/no/such/path")),
        (405, await client.put("/api/v1/notes")),
        (422, await client.post("/api/v1/accounts", json={"email": "not an email"})),
        (
            413,
            await client.post(
                "/api/v1/accounts",
                content=b"x" * (1_048_576 + 1),
                headers={"content-type": "application/json"},
            ),
        ),
        (
            415,
            await client.post(
                "/api/v1/accounts", content=b"email=a", headers={"content-type": "text/plain"}
            ),
        ),
        (401, await client.get("/api/v1/me")),
    ]
    for status, response in cases:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert_security_headers(response)
