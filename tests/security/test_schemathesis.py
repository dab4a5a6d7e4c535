"""The OpenAPI document is true: schemathesis (v4) fuzzes every operation of the running app
(SQLite and PostgreSQL) with valid and invalid data, authenticated, and checks that no answer
is a 5xx and every answer has a documented status, content type, headers and body schema.

Operations run with an ordinary account's token; the operator operations with an admin's.
Operations that would end the session (log out, erase the account) get a throwaway account,
and those taking a note id also run against real notes so successful answers are checked
too. Bounded: a few dozen examples per operation and mode.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stalwart.app import create_app
from stalwart.ops.admins import create_or_promote_admin
from tests.conftest import make_settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
]
EXAMPLES = 20
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the repository; xdist workers share no files
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failure is reported as is
    suppress_health_check=list(HealthCheck),
)
ADMIN_PREFIXES = ("/api/v1/admin/", "/api/monitor", "/metrics")
# Ending the session: a throwaway account, with a fresh token for each example.
SESSION_ENDING = {("DELETE", "/api/v1/auth/tokens/current"), ("DELETE", "/api/v1/me")}


class Session:
    """Accounts on the app under test, through schemathesis' own ASGI client (its event loop)."""

    def __init__(self, http: requests.Session) -> None:
        self.http = http

    def signup(self, name: str) -> tuple[str, str, str]:
        email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
        password = f"pw-{uuid.uuid4().hex}"
        r = self.http.post("/api/v1/accounts", json={"email": email, "password": password, "display_name": name})
        assert r.status_code == 201, r.text
        return email, password, self.login(email, password)

    def login(self, email: str, password: str) -> str:
        r = self.http.post("/api/v1/auth/tokens", json={"email": email, "password": password})
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token

    def note(self, token: str, *, trashed: bool = False) -> str:
        headers = {"Authorization": f"Bearer {token}"}
        r = self.http.post("/api/v1/notes", json={"title": "real", "body": "<p>b</p>", "tags": ["t"]}, headers=headers)
        assert r.status_code == 201, r.text
        note_id: str = r.json()["id"]
        if trashed:
            assert self.http.delete(f"/api/v1/notes/{note_id}", headers=headers).status_code == 204
        return note_id


@pytest.fixture
def loaded(tmp_path: Path, database_url: str) -> Iterator[tuple[FastAPI, Any]]:
    settings_ = make_settings(tmp_path, database_url=database_url, access_log=False)
    app = create_app(settings_)
    try:
        # Loads /openapi.json through the app; the lifespan runs on schemathesis' event loop.
        yield app, schemathesis.openapi.from_asgi("/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()


def _run(operation: Any, mode: GenerationMode, headers: Callable[[], dict[str, str]], **fixed: Any) -> None:
    @HYPOTHESIS
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def examples(case: Any) -> None:
        case.call_and_validate(headers=headers(), checks=CHECKS)

    examples()


def test_every_operation_conforms_to_the_openapi_document(loaded: tuple[FastAPI, Any]) -> None:
    app, schema = loaded
    with asgi.get_client(app) as http:
        session = Session(http)
        user_email, user_password, user_token = session.signup("user")
        admin_email, admin_password, _ = session.signup("admin")
        asyncio.run(create_or_promote_admin(app.state.settings, admin_email, "Admin", admin_password))
        admin_token = session.login(admin_email, admin_password)

        def bearer(token: str) -> Callable[[], dict[str, str]]:
            return lambda: {"Authorization": f"Bearer {token}"}

        throwaway_email, throwaway_password, _ = session.signup("throwaway")

        def throwaway() -> dict[str, str]:
            # A fresh token for each example: logging out revokes it, and erasing the account
            # needs its password, which generated data never has.
            return {"Authorization": f"Bearer {session.login(throwaway_email, throwaway_password)}"}

        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 25
        failures: list[str] = []
        for operation in operations:
            key = (operation.method.upper(), operation.path)
            if key in SESSION_ENDING:
                headers = throwaway
            elif operation.path.startswith(ADMIN_PREFIXES) and key != ("POST", "/api/v1/admin/backups"):
                headers = bearer(admin_token)  # starting backups is left to the backup tests
            else:
                headers = bearer(user_token)
            runs: list[tuple[GenerationMode, dict[str, Any]]] = [(GenerationMode.POSITIVE, {})]
            raw = schema.raw_schema["paths"][operation.path][operation.method.lower()]
            if raw.get("parameters") or raw.get("requestBody"):  # else there is nothing to make invalid
                runs.append((GenerationMode.NEGATIVE, {}))
            if "{note_id}" in operation.path:
                trashed = operation.path.startswith("/api/v1/trash/")
                real = session.note(user_token, trashed=trashed)
                runs.append((GenerationMode.POSITIVE, {"path_parameters": {"note_id": real}}))
            if operation.path == "/api/v1/accounts/{account_id}":
                me = http.get("/api/v1/me", headers=bearer(user_token)()).json()["id"]
                runs.append((GenerationMode.POSITIVE, {"path_parameters": {"account_id": me}}))
            for mode, fixed in runs:
                try:
                    _run(operation, mode, headers, **fixed)
                except BaseException as exc:  # a FailureGroup: gather all, report once
                    if not isinstance(exc, Exception):
                        raise
                    failures.append(f"{key} {mode.value} {fixed}:\n{exc}")
        # The accounts still work: the run did not lock anyone out.
        assert session.login(user_email, user_password)
        assert failures == [], "\n\n".join(failures)
