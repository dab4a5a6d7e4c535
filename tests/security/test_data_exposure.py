"""OWASP API3 (excessive data exposure): responses carry exactly the documented fields, and
never a password, a password hash, a token hash or another internal field.

The snapshot below is every response model's property names: adding a field to a response is
a conscious change of this file, reviewed as one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from stalwart.data.models import Account as AccountRow
from stalwart.data.models import Token
from tests.conftest import Account, signup
from tests.security.helpers import make_admin

pytestmark = pytest.mark.anyio

RESPONSE_MODELS: dict[str, set[str]] = {
    "AccountExport": {"account", "audit_events", "exported_at", "format", "notes", "tokens"},
    "AccountOut": {"created_at", "display_name", "email", "id", "role"},
    "AdminAccountOut": {"created_at", "display_name", "email", "id", "last_login_at", "role"},
    "AlertOut": {"description", "instances", "name", "scope", "since", "state", "threshold",
                 "unit", "value"},
    "AuditEventOut": {"actor", "at", "details", "event", "id", "ip", "subject"},
    "BackupJobOut": {"started_at", "status"},
    "BackupOut": {"created_at", "encrypted", "name", "row_counts", "schema_revision", "size",
                  "verified", "verified_at"},
    "DatabaseOut": {"backend", "pool", "response_time_ms", "status"},
    "ExportAccount": {"created_at", "display_name", "email", "id", "last_login_at", "role",
                      "updated_at"},
    "ExportAuditEvent": {"actor", "at", "details", "event", "id", "ip", "subject"},
    "ExportNote": {"body", "created_at", "deleted_at", "id", "tags", "title", "updated_at",
                   "version"},
    "ExportToken": {"created_at", "expires_at", "id", "revoked_at"},
    "FieldProblem": {"detail", "pointer"},
    "HealthCheckOut": {"componentType", "observedUnit", "observedValue", "output", "status",
                       "time"},
    "HealthOut": {"checks", "description", "releaseId", "serviceId", "status", "version"},
    "InstanceOut": {"cpu_percent", "id", "in_flight", "last_seen_seconds", "loop_lag_max_ms",
                    "loop_lag_ms", "open_fds", "pid", "rss_bytes", "started_at", "threads",
                    "uptime_seconds"},
    "ListPage_AdminAccountOut_": {"data", "next"},
    "ListPage_AuditEventOut_": {"data", "next"},
    "ListPage_BackupOut_": {"data", "next"},
    "ListPage_NoteOut_": {"data", "next"},
    "ListPage_TrashedNoteOut_": {"data", "next"},
    "Live": {"status"},
    "MonitorOut": {"alerts", "database", "instances", "process", "rate_limit", "redis",
                   "requests", "routes", "service", "sharing", "system", "timeline"},
    "NoteOut": {"body", "created_at", "id", "tags", "title", "updated_at", "version"},
    "PoolOut": {"idle", "in_use", "overflow", "size"},
    "Problem": {"detail", "instance", "request_id", "status", "title", "type"},
    "ProcessOut": {"cpu_percent", "loop_lag_max_ms", "loop_lag_ms", "open_fds", "rss_bytes",
                   "rss_trend", "threads"},
    "RateLimitOut": {"errors", "hits", "rejections"},
    "RedisOut": {"configured", "latency_ms", "status"},
    "RequestsOut": {"by_method", "by_status_class", "in_flight", "total", "windows"},
    "RouteOut": {"by_method", "by_status_class", "route", "total", "windows"},
    "ServiceOut": {"environment", "id", "release_id", "started_at", "time", "uptime_seconds",
                   "version"},
    "SharingOut": {"instances", "mode"},
    "SystemOut": {"cpu_count", "cpu_percent", "load_1", "load_15", "load_5",
                  "memory_available_bytes", "memory_total_bytes", "memory_used_percent"},
    "TimelinePointOut": {"error_rate_4xx", "error_rate_5xx", "p95_ms", "rate_per_second",
                         "requests", "t"},
    "TokenOut": {"expires_at", "token", "token_type"},
    "TrashedNoteOut": {"body", "created_at", "deleted_at", "id", "purge_after", "tags", "title",
                       "updated_at", "version"},
    "TrendPointOut": {"t", "value"},
    "ValidationProblem": {"detail", "errors", "instance", "request_id", "status", "title",
                          "type"},
    "WindowOut": {"error_rate_4xx", "error_rate_5xx", "errors_4xx", "errors_5xx", "max_ms",
                  "p50_ms", "p95_ms", "p99_ms", "rate_per_second", "requests"},
    "WindowsOut": {"15m", "1m", "5m"},
}

# Names that must never be a response field, at any depth.
FORBIDDEN_KEYS = {
    "password", "password_hash", "current_password", "token_hash", "hash", "secret",
    "secret_key", "monitor_token", "backup_encryption_key", "database_url", "dsn", "salt",
    "account_id", "owner_id", "traceback", "stack", "exception",
}


def _name(ref: str) -> str:
    return ref.rsplit("/", 1)[1]


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield _name(node["$ref"])
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def response_models(spec: dict[str, Any]) -> dict[str, set[str]]:
    """Every schema reachable from a response of any operation, with its property names."""
    schemas = spec["components"]["schemas"]
    seen: set[str] = set()
    todo = [ref for item in spec["paths"].values() for op in item.values()
            for ref in _refs(op["responses"])]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_refs(schemas[name]))
    return {name: set(schemas[name].get("properties", {})) for name in seen}


async def test_response_schema_snapshot(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    models = response_models(spec)
    assert models == RESPONSE_MODELS
    for name, keys in models.items():
        assert not keys & FORBIDDEN_KEYS, (name, keys & FORBIDDEN_KEYS)
    # The bearer token is returned once, by the login operation, and nowhere else.
    holders = {name for name, keys in models.items() if "token" in keys}
    assert holders == {"TokenOut"}


# --- the responses themselves -------------------------------------------------------------


class Checker:
    """Walks JSON bodies against the spec: no undocumented field, no forbidden name or value."""

    def __init__(self, spec: dict[str, Any], secrets: set[str]) -> None:
        self.spec = spec
        self.schemas = spec["components"]["schemas"]
        self.secrets = secrets
        self.operations: list[tuple[str, re.Pattern[str], dict[str, Any]]] = []
        for path, item in spec["paths"].items():
            pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
            for method, op in item.items():
                self.operations.append((method.upper(), pattern, op))
        self.checked = 0

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.schemas[_name(schema["$ref"])]
        return schema

    def _walk(self, value: Any, schema: dict[str, Any] | None, where: str) -> None:
        schema = self._resolve(schema) if schema is not None else None
        if schema is not None and "anyOf" in schema:
            options = [self._resolve(o) for o in schema["anyOf"]]
            kinds = {"object": dict, "array": list}
            matching = [o for o in options if isinstance(value, kinds.get(o.get("type", ""), ()))]
            schema = matching[0] if matching else None
        if isinstance(value, dict):
            for key in value:
                assert key.lower() not in FORBIDDEN_KEYS, f"{where}: field {key!r}"
            properties = schema.get("properties") if schema else None
            if properties is not None:
                extra = set(value) - set(properties)
                assert not extra, f"{where}: undocumented fields {sorted(extra)}"
                for key, item in value.items():
                    self._walk(item, properties[key], f"{where}.{key}")
            else:
                extra_schema = schema.get("additionalProperties") if schema else None
                for key, item in value.items():
                    sub = extra_schema if isinstance(extra_schema, dict) else None
                    self._walk(item, sub, f"{where}.{key}")
        elif isinstance(value, list):
            items = schema.get("items") if schema else None
            for index, item in enumerate(value):
                self._walk(item, items, f"{where}[{index}]")
        elif isinstance(value, str):
            assert "$argon2" not in value, f"{where}: a password hash"
            for secret in self.secrets:
                assert secret not in value, f"{where}: a secret value"

    def check(self, r: httpx.Response) -> None:
        method, path = r.request.method, r.request.url.path
        where = f"{method} {path} -> {r.status_code}"
        for secret in self.secrets:
            assert secret not in r.text, f"{where}: a secret value"
            assert all(secret not in v for v in r.headers.values()), f"{where}: header"
        media_type = r.headers.get("content-type", "").split(";")[0]
        if not media_type.endswith("json") or not r.content:
            return
        schema = None
        for op_method, pattern, op in self.operations:
            if op_method == method and pattern.match(path):
                content = op["responses"].get(str(r.status_code), {}).get("content", {})
                schema = content.get(media_type, {}).get("schema")
        if r.status_code < 400:
            assert schema is not None, f"{where}: undocumented response"
        self._walk(r.json(), schema, where)
        self.checked += 1


async def test_no_response_exposes_hashes_secrets_or_undocumented_fields(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, bob: Account
) -> None:
    await make_admin(app, alice)
    login = await client.post(
        "/api/v1/auth/tokens", json={"email": bob.email, "password": bob.password}
    )
    assert login.status_code == 201
    assert set(login.json()) == {"token", "token_type", "expires_at"}
    spare = login.json()["token"]
    spec = (await client.get("/openapi.json")).json()
    async with app.state.resources.db.session() as session:
        hashes = set((await session.scalars(select(Token.token_hash))).all())
        password_hashes = set((await session.scalars(select(AccountRow.password_hash))).all())
    assert len(hashes) == 3
    assert len(password_hashes) == 2
    # The tokens themselves: each may travel in a request header, never in a response.
    secrets = hashes | password_hashes | {alice.password, bob.password, alice.token, bob.token, spare}
    checker = Checker(spec, secrets)
    responses: list[httpx.Response] = []

    async def call(method: str, url: str, who: Account | None = alice, **kw: Any) -> httpx.Response:
        headers = who.headers if who else {}
        r = await client.request(method, url, headers=headers, **kw)
        responses.append(r)
        return r

    note = (await call("POST", "/api/v1/notes", json={"title": "n", "body": "b", "tags": ["t"]})).json()
    nid = note["id"]
    await call("GET", f"/api/v1/notes/{nid}")
    await call("PATCH", f"/api/v1/notes/{nid}", json={"title": "n2"})
    await call("GET", "/api/v1/notes?tag=t")
    await call("GET", f"/api/v1/notes/{nid}", who=bob)
    await call("DELETE", f"/api/v1/notes/{nid}")
    await call("GET", "/api/v1/trash")
    await call("POST", f"/api/v1/trash/{nid}/restore")
    await call("GET", "/api/v1/me")
    await call("PATCH", "/api/v1/me", json={"display_name": "Alice A"})
    await call("PATCH", "/api/v1/me", json={"password": "x" * 20, "current_password": "wrong-password"})
    await call("GET", "/api/v1/me/export")
    await call("GET", f"/api/v1/accounts/{alice.id}")
    await call("GET", f"/api/v1/accounts/{alice.id}", who=bob)
    await call("GET", "/api/v1/admin/accounts")
    await call("GET", "/api/v1/admin/audit?limit=200")
    await call("GET", "/api/v1/admin/backups")
    await call("GET", "/api/v1/admin/accounts", who=bob)
    await call("GET", "/api/monitor")
    await call("GET", "/health")
    await call("GET", "/health/live")
    await call("POST", "/api/v1/accounts", who=None,
               json={"email": alice.email, "password": alice.password, "display_name": "x"})
    await call("POST", "/api/v1/accounts", who=None,
               json={"email": "new@example.com", "password": "p" * 8, "display_name": "x"})
    await call("POST", "/api/v1/auth/tokens", who=None,
               json={"email": alice.email, "password": bob.password})
    await call("GET", "/api/v1/me", who=None)
    await call("DELETE", "/api/v1/auth/tokens/current", who=bob)
    statuses = [r.status_code for r in responses]
    assert statuses == [201, 200, 200, 200, 404, 204, 200, 200, 200, 200, 403, 200, 200, 404,
                        200, 200, 200, 403, 200, 200, 200, 409, 422, 401, 401, 204]
    for r in responses:
        checker.check(r)
    assert checker.checked == 24

    # The export holds the account's tokens by id and dates only.
    export = next(r for r in responses if r.request.url.path == "/api/v1/me/export").json()
    assert export["tokens"]
    assert all(
        set(t) == {"created_at", "expires_at", "id", "revoked_at"} for t in export["tokens"]
    )
    # A new account gets the same treatment.
    carol = await signup(client, "carol")
    r = await client.get("/api/v1/me", headers=carol.headers)
    assert set(r.json()) == RESPONSE_MODELS["AccountOut"]
    assert carol.password not in r.text


async def test_security_schemes_say_which_token_each_operation_takes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes == {
        "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "Opaque token from POST /api/v1/auth/tokens"},
        "MonitorBearer": {
            "type": "http", "scheme": "bearer", "description": "An admin account's token, or STALWART_MONITOR_TOKEN",
        },
    }
    for path in ("/api/monitor", "/metrics"):
        assert spec["paths"][path]["get"]["security"] == [{"MonitorBearer": []}]
