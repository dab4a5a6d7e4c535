"""No secret and no stack trace in any response: success, every error status, every route.

The app runs with real secrets set (secret key, monitor token, backup encryption key, and on
PostgreSQL a password in the database URL). Every route is requested anonymously, as a user,
as an administrator and with the monitor token; then every error status is provoked, a 500
through a test-only route added to this test's app (never to production code) that raises an
exception quoting the secrets.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from stalwart.data.errors import DatabaseUnavailable
from stalwart.settings import Settings
from tests.conftest import Account, make_settings, signup
from tests.security.helpers import concrete_paths, make_admin

pytestmark = pytest.mark.anyio

# What a stack trace, a driver message or a file path looks like in a response.
LEAK_MARKERS = re.compile(
    r"Traceback|File \"|site-packages|\.py\b|line \d+, in|sqlalchemy|asyncpg|aiosqlite|psycopg|"
    r"SELECT |INSERT |UPDATE |postgresql|sqlite|RuntimeError|Exception|redis://",
    re.IGNORECASE,
)


class Secrets:
    def __init__(self, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex
        self.secret_key = f"secret-key-{tag}-{tag}"
        self.monitor_token = f"monitor-token-{tag}"
        self.backup_key = f"backup-passphrase-{tag}"
        self.db_password = f"dbpw{tag[:16]}"
        self.data_dir = str(tmp_path)

    def values(self) -> dict[str, str]:
        return {
            "secret_key": self.secret_key,
            "monitor_token": self.monitor_token,
            "backup_encryption_key": self.backup_key,
            "database password": self.db_password,
        }


@pytest.fixture
def secrets(tmp_path: Path) -> Secrets:
    return Secrets(tmp_path)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, secrets: Secrets) -> Settings:
    """Overrides the conftest `settings`: the same app, with every secret set."""
    if database_url.startswith("postgresql"):
        # Trust authentication accepts (and ignores) the password: the URL carries one anyway.
        database_url = database_url.replace("postgres@", f"postgres:{secrets.db_password}@", 1)
        assert secrets.db_password in database_url
    return make_settings(
        tmp_path,
        database_url=database_url,
        secret_key=secrets.secret_key,
        monitor_token=secrets.monitor_token,
        backup_encryption_key=secrets.backup_key,
    )


@pytest.fixture
async def app_with_failures(app: FastAPI) -> FastAPI:
    """The fixture app plus test-only routes that fail the worst way, quoting the secrets."""
    settings: Settings = app.state.settings

    async def explode() -> None:
        raise RuntimeError(
            f"cannot open {settings.database_url} with key {settings.secret_key.get_secret_value()} "
            f"and {settings.monitor_token.get_secret_value() if settings.monitor_token else ''}"
        )

    async def unavailable() -> None:
        raise DatabaseUnavailable(f"pool exhausted for {settings.database_url}")

    async def key_error() -> None:
        backup = settings.backup_encryption_key
        raise KeyError(backup.get_secret_value() if backup else "")

    app.add_api_route("/test-only/explode", explode, methods=["GET"])
    app.add_api_route("/test-only/unavailable", unavailable, methods=["GET"])
    app.add_api_route("/test-only/key-error", key_error, methods=["POST"])
    return app


def _forms(secret: str) -> set[str]:
    """A secret as it could appear: raw, JSON-escaped, URL-encoded, base64."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        quote(secret, safe=""),
        base64.b64encode(secret.encode()).decode().rstrip("="),
    }


def assert_no_leak(r: httpx.Response, secrets: Secrets, *, extra: tuple[str, ...] = ()) -> None:
    label = f"{r.request.method} {r.request.url.path} -> {r.status_code}"
    header_text = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    for name, secret in [*secrets.values().items(), *(("request secret", e) for e in extra)]:
        for form in _forms(secret):
            assert form not in r.text, f"{label}: the {name} in the body"
            assert form not in header_text, f"{label}: the {name} in a header"
    media_type = r.headers.get("content-type", "").split(";")[0]
    if media_type.endswith("json"):
        assert secrets.data_dir not in r.text, f"{label}: a file system path"
    if r.status_code >= 400:
        # Operator figures may name the database backend; an error says nothing of internals.
        match = LEAK_MARKERS.search(r.text)
        assert match is None, f"{label}: {match.group(0) if match else ''!r} in {r.text[:300]}"
        assert media_type == "application/problem+json", label
        assert set(r.json()) >= {"type", "title", "status", "detail", "instance", "request_id"}
        assert "traceback" not in r.json(), label


async def test_no_route_leaks_a_secret_to_anyone(
    app_with_failures: FastAPI, client: httpx.AsyncClient, secrets: Secrets
) -> None:
    user = await signup(client, "user")
    admin = await signup(client, "admin")
    await make_admin(app_with_failures, admin)
    identities: list[dict[str, str]] = [
        {},
        user.headers,
        admin.headers,
        {"Authorization": f"Bearer {secrets.monitor_token}"},
    ]
    statuses: set[int] = set()
    seen = 0
    for path in concrete_paths(app_with_failures):
        if path.startswith("/test-only/"):
            continue
        for headers in identities:
            r = await client.get(path, headers=headers)
            statuses.add(r.status_code)
            assert_no_leak(r, secrets)
            seen += 1
    assert seen > 60
    assert {200, 401, 403, 404, 405} <= statuses
    for path in ("/openapi.json", "/docs", "/health", "/health/live", "/api/monitor", "/metrics"):
        r = await client.get(path, headers=identities[3])
        assert r.status_code == 200, path
        assert_no_leak(r, secrets)


async def test_no_error_leaks_a_secret_or_a_stack_trace(
    app_with_failures: FastAPI, client: httpx.AsyncClient, secrets: Secrets
) -> None:
    alice: Account = await signup(client, "alice")
    note = (await client.post("/api/v1/notes", json={"title": "t"}, headers=alice.headers)).json()
    request_secret = f"Request-Secret-{uuid.uuid4().hex}"
    json_headers = {"content-type": "application/json"}
    cases: list[tuple[int, httpx.Response]] = [
        (400, await client.post("/api/v1/accounts", content=b'{"email": "' + request_secret.encode(),
                                headers=json_headers)),
        (400, await client.get("/api/v1/notes?cursor=" + request_secret, headers=alice.headers)),
        (401, await client.get("/api/v1/me", headers={"Authorization": f"Bearer {request_secret}"})),
        (401, await client.post("/api/v1/auth/tokens", json={"email": alice.email, "password": request_secret})),
        (401, await client.get("/api/monitor", headers={"Authorization": f"Bearer {request_secret}"})),
        (403, await client.get("/api/monitor", headers=alice.headers)),
        (403, await client.get("/api/v1/admin/accounts", headers=alice.headers)),
        (403, await client.patch("/api/v1/me", json={"password": request_secret, "current_password": "wrong"},
                                 headers=alice.headers)),
        (404, await client.get(f"/no/such/{request_secret}")),
        (404, await client.get(f"/api/v1/notes/{uuid.uuid4()}", headers=alice.headers)),
        (405, await client.put("/api/v1/notes", headers=alice.headers)),
        (409, await client.post("/api/v1/accounts", json={"email": alice.email, "password": request_secret,
                                                          "display_name": "x"})),
        (412, await client.patch(f"/api/v1/notes/{note['id']}", json={"title": "x"},
                                 headers={**alice.headers, "If-Match": '"v999"'})),
        (413, await client.post("/api/v1/notes", content=b"x" * (1_048_576 + 1),
                                headers={**alice.headers, **json_headers})),
        (415, await client.post("/api/v1/notes", content=request_secret.encode(),
                                headers={**alice.headers, "content-type": "text/plain"})),
        (422, await client.post("/api/v1/accounts", json={"email": "a@example.com", "password": request_secret * 5,
                                                          "display_name": "x"})),
        (422, await client.post("/api/v1/auth/tokens", json={"email": request_secret, "password": "x"})),
        (422, await client.post("/api/v1/notes", json={"title": request_secret, "secret": request_secret},
                                headers=alice.headers)),
        (500, await client.get("/test-only/explode")),
        (500, await client.post("/test-only/key-error", json={})),
        (503, await client.get("/test-only/unavailable")),
    ]
    for status, r in cases:
        assert r.status_code == status, (status, r.request.url, r.text)
        assert_no_leak(r, secrets, extra=(request_secret,) if status != 404 else ())
    five_hundred = cases[-3][1]
    assert five_hundred.json()["detail"] == (
        "The server could not complete the request. Quote the request id when reporting it."
    )
    # The request id is how an operator finds the stack trace in the log.
    assert five_hundred.json()["request_id"] == five_hundred.headers["x-request-id"]
    assert cases[-1][1].json()["detail"] == "A dependency is unavailable. Retry after the delay in Retry-After."
