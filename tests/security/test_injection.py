"""OWASP API8 (injection): SQL and XSS payloads in every string field and parameter.

The slots come from the service's own OpenAPI document, so a new endpoint or field is
attacked without editing this file. The service answers 2xx/4xx, never 5xx; the tables are
still there; stored note bodies are inert HTML; titles and tags are plain text stored as given
and returned as JSON that browsers must not sniff.
"""

from __future__ import annotations

import base64
import functools
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from anyio.from_thread import start_blocking_portal
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select

from stalwart.api.sanitize import sanitize_html
from stalwart.data.models import Account as AccountRow
from stalwart.data.models import Note
from stalwart.settings import Settings
from tests.conftest import Account
from tests.security.helpers import INJECTION_PAYLOADS, client_at, make_admin, raw_request, running_app

pytestmark = pytest.mark.anyio

TABLES = {"accounts", "tokens", "notes", "note_tags", "audit_events"}
JSON_TYPES = {"application/json", "application/problem+json", "application/health+json"}
_SAFE_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "ins", "kbd", "li", "ol", "p", "pre", "s", "strong", "sub", "sup",
    "table", "tbody", "td", "th", "thead", "tr", "ul",
}
_SAFE_SCHEMES = ("http:", "https:", "mailto:")
_CONTROL = re.compile(r"[\x00-\x20]")


class _InertCheck(HTMLParser):
    """Collects every reason a stored body could run script in a browser."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _SAFE_TAGS:
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on") or name in ("style", "srcdoc", "formaction"):
                self.problems.append(f"{tag}[{name}]")
            if name in ("href", "src") and value is not None:
                url = _CONTROL.sub("", value).lower()
                if ":" in url.split("/", 1)[0] and not url.startswith(_SAFE_SCHEMES):
                    self.problems.append(f"{tag}[{name}={value}]")

    handle_startendtag = handle_starttag


def inert_problems(html: str) -> list[str]:
    parser = _InertCheck()
    parser.feed(html)
    parser.close()
    lowered = html.lower()
    # Also what a lenient browser parser might still see as markup.
    if "<script" in lowered:
        parser.problems.append("<script")
    return parser.problems


# --- slots from the OpenAPI document -----------------------------------------------------


@dataclass(frozen=True)
class Slot:
    method: str
    path: str
    where: str  # "path", "query", "body", "body[]" (an item of a list of strings)
    name: str

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.where}:{self.name}"


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        return _resolve(spec, spec["components"]["schemas"][ref.rsplit("/", 1)[1]])
    return schema


def _kinds(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """"string" and/or "string[]" when the schema accepts those."""
    schema = _resolve(spec, schema)
    kinds: set[str] = set()
    for option in schema.get("anyOf", [schema]):
        option = _resolve(spec, option)
        if option.get("type") == "string":
            kinds.add("string")
        elif option.get("type") == "array" and _resolve(spec, option["items"]).get("type") == "string":
            kinds.add("string[]")
    return kinds


def string_slots(spec: dict[str, Any]) -> Iterator[Slot]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for param in op.get("parameters", []):
                if "string" in _kinds(spec, param["schema"]):
                    yield Slot(method.upper(), path, param["in"], param["name"])
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None:
                continue
            model = _resolve(spec, body["schema"])
            for name, prop in model.get("properties", {}).items():
                kinds = _kinds(spec, prop)
                if "string" in kinds:
                    yield Slot(method.upper(), path, "body", name)
                if "string[]" in kinds:
                    yield Slot(method.upper(), path, "body[]", name)


# --- the attack ---------------------------------------------------------------------------


class Target:
    """A valid request per operation, with one slot replaced by a payload."""

    def __init__(self, client: httpx.AsyncClient, admin: Account, note_id: str) -> None:
        self.client = client
        self.admin = admin
        self.note_id = note_id
        self.password = admin.password
        self.email = admin.email

    def _body(self, slot: Slot) -> dict[str, Any] | None:
        key = (slot.method, slot.path)
        if key == ("POST", "/api/v1/accounts"):
            return {
                "email": f"inj-{uuid.uuid4().hex[:10]}@example.com",
                "password": "long-enough-password",
                "display_name": "Injected",
            }
        if key == ("POST", "/api/v1/auth/tokens"):
            return {"email": self.email, "password": self.password}
        if key == ("PATCH", "/api/v1/me"):
            return {"current_password": self.password}
        if key == ("DELETE", "/api/v1/me"):
            return {"current_password": "not-the-password"}
        if key == ("POST", "/api/v1/notes"):
            return {"title": "t", "body": "b", "tags": ["x"]}
        if key == ("PATCH", "/api/v1/notes/{note_id}"):
            return {}
        return None

    def values(self, slot: Slot, payload: str) -> list[str]:
        if slot.name == "email":
            return [payload, f"{payload}@example.com"]
        return [payload]

    async def send(self, slot: Slot, value: str) -> httpx.Response:
        path_values = {"note_id": self.note_id, "account_id": self.admin.id, "name": "x.tar"}
        query: dict[str, str] = {}
        body = self._body(slot)
        if slot.where == "path":
            path_values[slot.name] = value
        elif slot.where == "query":
            query[slot.name] = value
        elif body is not None:
            body[slot.name] = [value] if slot.where == "body[]" else value
        path = slot.path.format(**{k: quote(v, safe="") for k, v in path_values.items()})
        response = await self.client.request(
            slot.method, path, params=query, json=body, headers=self.admin.headers
        )
        if response.status_code == 200 and (slot.method, slot.path) == ("PATCH", "/api/v1/me"):
            # The payload became the password or the email: later requests use it.
            if slot.name == "password":
                self.password = value
            elif slot.name == "email":
                self.email = response.json()["email"]
        return response


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for key, item in data.items():
            yield key
            yield from _strings(item)
    elif isinstance(data, list):
        for item in data:
            yield from _strings(item)


def assert_safe_response(slot: Slot, value: str, r: httpx.Response) -> None:
    label = f"{slot} = {value[:40]!r} -> {r.status_code}"
    assert r.status_code < 500, f"{label}: {r.text[:300]}"
    assert r.headers["x-content-type-options"] == "nosniff", label
    if r.status_code in (204, 304) or r.request.method == "HEAD":
        return
    media_type = r.headers["content-type"].split(";")[0].strip()
    assert media_type in JSON_TYPES, label
    if r.status_code >= 400:
        assert media_type == "application/problem+json", label
        # The offending input is never echoed back (it could be a password, or markup); the
        # `instance` member is the request path, JSON-encoded data by design.
        if len(value) >= 6:
            problem = {k: v for k, v in r.json().items() if k != "instance"}
            assert all(value not in text for text in _strings(problem)), label


def assert_plain_text_kept(slot: Slot, value: str, r: httpx.Response) -> None:
    """Accepted titles, names and tags come back exactly as sent (trimmed), as JSON data."""
    if r.status_code not in (200, 201):
        return
    field = slot.name
    data = r.json()
    if field in ("title", "display_name"):
        assert data[field] == value.strip(), slot
    elif field == "tags":
        assert data["tags"] == [value.strip().lower()], slot
    elif field == "body":
        assert data["body"] == sanitize_html(value), slot
        assert inert_problems(data["body"]) == [], (slot, data["body"])


async def test_payloads_in_every_string_slot_of_every_operation(
    client: httpx.AsyncClient, app: FastAPI, alice: Account
) -> None:
    await make_admin(app, alice)  # reaches the operator endpoints too
    spec = (await client.get("/openapi.json")).json()
    slots = list(string_slots(spec))
    names = {str(s) for s in slots}
    # The enumeration works: these are among the slots it found.
    for expected in (
        "POST /api/v1/accounts body:email", "POST /api/v1/notes body:title",
        "POST /api/v1/notes body[]:tags", "PATCH /api/v1/notes/{note_id} body:body",
        "GET /api/v1/notes query:q", "GET /api/v1/notes query:tag",
        "GET /api/v1/notes query:cursor", "GET /api/v1/notes/{note_id} path:note_id",
        "GET /api/v1/admin/audit query:subject", "GET /api/v1/admin/accounts query:cursor",
        "PATCH /api/v1/me body:password", "DELETE /api/v1/me body:current_password",
    ):
        assert expected in names, expected
    assert len(slots) >= 30

    r = await client.post("/api/v1/notes", json={"title": "target"}, headers=alice.headers)
    target = Target(client, alice, r.json()["id"])
    accepted = 0
    for slot in slots:
        for payload in INJECTION_PAYLOADS:
            for value in target.values(slot, payload):
                response = await target.send(slot, value)
                assert_safe_response(slot, value, response)
                assert_plain_text_kept(slot, value, response)
                accepted += response.status_code < 300
    assert accepted > 50  # payloads reached storage, not only validation errors

    # The schema is intact and the data still works.
    async with app.state.resources.db.engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    assert tables >= TABLES
    r = await client.post(
        "/api/v1/auth/tokens", json={"email": target.email, "password": target.password}
    )
    assert r.status_code == 201
    r = await client.get("/api/v1/notes?limit=100", headers=alice.headers)
    assert r.status_code == 200
    assert len(r.json()["data"]) > 10
    # Every stored body is inert; titles are the payloads themselves, not escaped or altered.
    async with app.state.resources.db.session() as session:
        notes = (await session.scalars(select(Note))).all()
        names_stored = set((await session.scalars(select(AccountRow.display_name))).all())
    for note in notes:
        assert inert_problems(note.body) == [], note.body
    titles = {note.title for note in notes}
    assert "<script>alert(1)</script>" in titles
    assert "' OR '1'='1" in titles
    assert "<img src=x onerror=alert(1)>" in names_stored


SANITIZED = [
    ("<script>alert(1)</script>hi", "hi"),
    ('<p onclick="alert(1)">x</p>', "<p>x</p>"),
    ('<a href="javascript:alert(1)">x</a>', '<a rel="noopener noreferrer">x</a>'),
    ('<a href=" JaVaScRiPt:alert(1)">x</a>', '<a rel="noopener noreferrer">x</a>'),
    ('<a href="data:text/html,<script>alert(1)</script>">x</a>',
     '<a rel="noopener noreferrer">x</a>'),
    ('<img src=x onerror=alert(1)>', '<img src="x">'),
    ("<svg/onload=alert(1)>", ""),
    ('<iframe src="https://evil.example"></iframe>', ""),
    ("<style>body{display:none}</style>ok", "ok"),
    ('<a href="https://example.com" target="_blank">x</a>',
     '<a href="https://example.com" rel="noopener noreferrer">x</a>'),
    ("**markdown** and 1 < 2", "**markdown** and 1 &lt; 2"),
    ("plain javascript:alert(1) text", "plain javascript:alert(1) text"),
]


async def test_note_bodies_are_sanitized_to_inert_html(
    client: httpx.AsyncClient, app: FastAPI, alice: Account
) -> None:
    for body, stored in SANITIZED:
        r = await client.post("/api/v1/notes", json={"title": "t", "body": body}, headers=alice.headers)
        assert r.status_code == 201
        assert r.json()["body"] == stored, body
        assert inert_problems(stored) == []
        async with app.state.resources.db.session() as session:
            assert await session.scalar(select(Note.body).where(Note.id == r.json()["id"])) == stored
        r = await client.patch(f"/api/v1/notes/{r.json()['id']}", json={"body": body}, headers=alice.headers)
        assert r.json()["body"] == stored, body


async def test_markup_in_titles_is_returned_as_json_data(
    client: httpx.AsyncClient, alice: Account
) -> None:
    title = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    r = await client.post("/api/v1/notes", json={"title": title}, headers=alice.headers)
    assert r.status_code == 201
    for response in (r, await client.get(f"/api/v1/notes/{r.json()['id']}", headers=alice.headers)):
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert response.json()["title"] == title


def test_random_text_never_breaks_the_service(settings: Settings) -> None:
    """Hypothesis: arbitrary unicode in every note field and list parameter is a 2xx or 4xx."""
    with start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(running_app(settings)) as app, \
            portal.wrap_async_context_manager(client_at(app)) as client:
        from tests.conftest import signup

        who = portal.call(signup, client, "fuzz")

        def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
            request = functools.partial(client.request, method, url, headers=who.headers, **kwargs)
            response = portal.call(request)
            assert response.status_code < 500, (method, url, kwargs, response.text)
            return response

        created = call("POST", "/api/v1/notes", json={"title": "seed"}).json()["id"]

        @hypothesis_settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(
            title=st.text(max_size=250),
            body=st.text(max_size=500),
            tag=st.text(max_size=60),
            q=st.text(max_size=210),
            cursor=st.text(max_size=210),
        )
        def attack(title: str, body: str, tag: str, q: str, cursor: str) -> None:
            r = call("POST", "/api/v1/notes", json={"title": title, "body": body, "tags": [tag]})
            if r.status_code == 201:
                assert r.json()["title"] == title.strip()
                assert inert_problems(r.json()["body"]) == []
            r = call("PATCH", f"/api/v1/notes/{created}", json={"body": body})
            if r.status_code == 200:
                assert inert_problems(r.json()["body"]) == []
            call("GET", "/api/v1/notes", params={"q": q, "tag": tag, "cursor": cursor})
            call("GET", f"/api/v1/notes/{quote(title, safe='')}")

        attack()


def _cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


CRAFTED_CURSORS = [
    _cursor("2020-01-01T00:00:00+00:00", "\x00"),  # NUL: PostgreSQL text cannot hold it
    _cursor("2020-01-01T00:00:00", "x"),  # naive timestamp
    _cursor("9999-12-31T23:59:59-23:59", "x"),  # beyond datetime.max in UTC
    _cursor("0001-01-01T00:00:00+23:59", "x"),  # before datetime.min in UTC
    _cursor("2020-01-01T00:00:00+00:00", ["x"]),
    _cursor("2020-01-01T00:00:00+00:00", 1),
    _cursor("2020-01-01T00:00:00+00:00", "x" * 65),
    _cursor("not a date", "x"),
    _cursor(1, 2),
    _cursor("2020-01-01T00:00:00+00:00"),
    _cursor({"a": 1}),
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    "!!!",
]


@pytest.mark.parametrize("path", ["/api/v1/notes", "/api/v1/trash", "/api/v1/admin/audit"])
async def test_forged_cursors_are_400(
    client: httpx.AsyncClient, app: FastAPI, alice: Account, path: str
) -> None:
    await make_admin(app, alice)
    for cursor in CRAFTED_CURSORS:
        r = await client.get(path, params={"cursor": cursor}, headers=alice.headers)
        assert r.status_code == 400, (cursor, r.text)
        assert r.json()["detail"] == "The cursor is not one this API issued."
    # A well-formed cursor with an SQL payload as the id is plain data: no rows, no error.
    r = await client.get(
        path, params={"cursor": _cursor("2020-01-01T00:00:00+00:00", "' OR '1'='1")},
        headers=alice.headers,
    )
    assert r.status_code == 200
    assert r.json()["data"] == [] or path == "/api/v1/admin/audit"


async def test_nul_in_any_parameter_is_422(
    client: httpx.AsyncClient, app: FastAPI, alice: Account
) -> None:
    """PostgreSQL text cannot hold NUL: refused before it reaches the driver, on every route."""
    await make_admin(app, alice)
    for method, url in (
        ("GET", "/api/v1/notes/%00"),
        ("PATCH", "/api/v1/notes/a%00b"),
        ("DELETE", "/api/v1/notes/%00"),
        ("POST", "/api/v1/trash/%00/restore"),
        ("DELETE", "/api/v1/trash/%00"),
        ("GET", "/api/v1/accounts/%00"),
        ("GET", "/api/v1/notes?q=%00"),
        ("GET", "/api/v1/notes?limit=5&q=a%00"),
        ("GET", "/api/v1/admin/audit?subject=%00"),
        ("GET", "/api/v1/admin/accounts?cursor=%00"),
        ("GET", "/api/v1/me?unknown=%00"),
    ):
        r = await client.request(method, url, json={} if method == "PATCH" else None,
                                 headers=alice.headers)
        assert r.status_code == 422, (method, url, r.text)
        pointers = [e["pointer"] for e in r.json()["errors"]]
        assert len(pointers) == 1, pointers
        assert pointers[0].split(":")[0] in ("path", "query"), pointers


async def test_static_files_refuse_traversal_and_nul(app: FastAPI) -> None:
    """The file-serving mounts: request targets as a server receives them, undecoded tricks
    included; nothing outside the asset folders is served and nothing fails."""
    for target in (
        "/docs/assets/..%2F..%2F..%2Fetc%2Fpasswd",
        "/docs/assets/../../../../etc/passwd",
        "/docs/assets/%2e%2e/%2e%2e/settings.py",
        "/docs/assets/%00",
        "/docs/assets/swagger-ui.css%00.js",
        "/static/..%2F..%2Fsettings.py",
        "/static/%00",
        "/monitor/assets/..%2F..%2Fapi%2Fsettings.py",
        "/monitor/assets/%00",
        "/docs/assets/" + "a" * 5_000,
    ):
        r = await raw_request(app, "GET", target)
        assert r.status in (404, 422), (target, r.status)
        assert r.headers["content-type"] == "application/problem+json", target
        assert b"root:" not in r.body
        assert b"BaseSettings" not in r.body
