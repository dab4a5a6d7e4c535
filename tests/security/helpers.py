"""Shared helpers of the security suite: apps with custom settings, clients at an address,
database snapshots, and the payload lists."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import anyio
import httpx
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy import select

from stalwart.app import create_app
from stalwart.data.models import Account, AuditEvent, Note, NoteTag, Token
from stalwart.ops.admins import create_or_promote_admin
from stalwart.settings import Settings
from tests.conftest import Account as TestAccount

__all__ = [
    "INJECTION_PAYLOADS",
    "PEER",
    "PLACEHOLDER",
    "RawResponse",
    "audit_events",
    "client_at",
    "concrete_paths",
    "db_snapshot",
    "make_admin",
    "problem_sans_ids",
    "raw_request",
    "running_app",
    "sha256",
]

# The direct peer of the `client` fixture (conftest): an untrusted public address.
PEER = "203.0.113.7"

INJECTION_PAYLOADS: tuple[str, ...] = (
    # SQL
    "' OR '1'='1",
    "' OR 1=1 --",
    "'; DROP TABLE notes;--",
    '"; DROP TABLE accounts; --',
    "1; SELECT pg_sleep(5)--",
    "' UNION SELECT id, email, password_hash FROM accounts--",
    "%' OR title LIKE '%",
    "\\'; DELETE FROM tokens WHERE ''='",
    # XSS
    "<script>alert(1)</script>",
    '" onmouseover=alert(1) x="',
    "<img src=x onerror=alert(1)>",
    "javascript:alert(1)",
    "<svg/onload=alert(1)>",
    "</textarea><iframe src=javascript:alert(1)>",
    "{{7*7}}${7*7}",
    # Encodings, NUL, unicode tricks
    "%00",
    "%27%20OR%20%271%27%3D%271",
    "\x00",
    "a\u0000b",
    "\u202egnp.exe",
    "\u200b\u200d\ufeff",
    "ＳＥＬＥＣＴ＊",
    "\U0001f4a9' OR '💩'='💩",
    "\ud7ff\ue000\uffff",
    "../../../../etc/passwd",
    # Sizes
    "A" * 5_000,
    "'" * 300,
)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """An app with these settings, its lifespan started (resources open) and closed after."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def client_at(app: FastAPI, host: str = PEER, port: int = 40000) -> httpx.AsyncClient:
    """A client whose requests come from the peer `host` (as the server's socket would see it)."""
    transport = httpx.ASGITransport(app=app, client=(host, port))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def make_admin(app: FastAPI, account: TestAccount) -> None:
    await create_or_promote_admin(app.state.settings, account.email, "Admin", account.password)


def _row(obj: Any) -> dict[str, Any]:
    return {column.key: getattr(obj, column.key) for column in obj.__table__.columns}


async def db_snapshot(app: FastAPI) -> dict[str, list[dict[str, Any]]]:
    """Every row of the user-data tables (audit events excluded: reads may add some)."""
    db = app.state.resources.db
    out: dict[str, list[dict[str, Any]]] = {}
    async with db.session() as session:
        for model, order in (
            (Account, Account.id),
            (Token, Token.id),
            (Note, Note.id),
            (NoteTag, NoteTag.note_id),
        ):
            rows = (await session.scalars(select(model).order_by(order))).all()
            out[model.__tablename__] = sorted(
                (_row(r) for r in rows), key=lambda r: tuple(str(v) for v in r.values())
            )
    return out


async def audit_events(app: FastAPI, event: str) -> int:
    db = app.state.resources.db
    async with db.session() as session:
        rows = (await session.scalars(select(AuditEvent).where(AuditEvent.event == event))).all()
    return len(rows)


def problem_sans_ids(response: httpx.Response) -> dict[str, Any]:
    """A problem body without the members that differ per request."""
    body = dict(response.json())
    body.pop("request_id", None)
    body.pop("instance", None)
    return body


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


async def raw_request(
    app: Any,
    method: str,
    target: str,
    *,
    client: tuple[str, int] = (PEER, 40000),
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> RawResponse:
    """One request with the request target exactly as given, the way uvicorn passes it on:
    `path` percent-decoded but not normalized (no dot-segment or slash clean-up), unlike
    HTTP clients, which tidy URLs before sending them."""
    raw_path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())]
        + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": client,
        "server": ("testserver", 80),
    }
    done = anyio.Event()
    sent = False
    response = RawResponse(status=0)

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            response.body += message.get("body", b"")
            if not message.get("more_body", False):
                done.set()

    await app(scope, receive, send)
    return response


# A well-formed id that names nothing: path parameters are filled with it.
PLACEHOLDER = "00000000-0000-4000-8000-000000000000"


def concrete_paths(app: FastAPI) -> list[str]:
    paths: set[str] = set()
    for route in iter_route_contexts(app.routes):
        path = route.path
        assert path is not None
        if route.methods is None:  # a mount: ask for a file inside it
            path += "/swagger-ui.css" if path == "/docs/assets" else "/missing"
        paths.add(re.sub(r"\{[^}]+\}", PLACEHOLDER, path))
    return sorted(paths)
