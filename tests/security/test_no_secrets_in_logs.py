"""No password, token or email in any log line, across a realistic API flow.

Everything the process writes is captured: the access log (flushed to stdout), the stdlib
logging output of `configure_logging` at DEBUG, the raw stdout and stderr file descriptors, and
every log record before formatting (so the app does not even hand a secret to logging, and
redaction is only the second line of defence).

Two modes. `configured`: the logging configuration as shipped, at DEBUG; nothing may appear,
not even the email. `all-debug`: every logger forced to DEBUG, including the SQL and driver
loggers the configuration keeps at WARNING; their statement parameters legitimately hold the
email (which is why the configuration silences them), but never a password or a token.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import text

from stalwart.logging_setup import configure_logging
from stalwart.policies.request_log import ACCESS_LOG
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

# The test client's own loggers (it logs the URLs it requests, query string included).
_CLIENT_SIDE = ("httpx", "httpcore")


class RawRecords(logging.Handler):
    """Every record as the app produced it: message, args, extras, exception, unredacted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_CLIENT_SIDE):
            return
        parts = [record.name, str(record.msg), repr(record.args), repr(vars(record))]
        # A broken log call is still captured above.
        with contextlib.suppress(Exception):
            parts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            parts.append("".join(traceback.format_exception(record.exc_info[1])))
        self.texts.append("\n".join(parts))


@dataclass
class Capture:
    mode: str = "configured"
    formatted: io.StringIO = field(default_factory=io.StringIO)
    raw: RawRecords = field(default_factory=RawRecords)
    stdout: str = ""
    stderr: str = ""

    def collect(self, capfd: pytest.CaptureFixture[str]) -> None:
        ACCESS_LOG.flush()
        for handler in logging.getLogger().handlers:
            handler.flush()
        out, err = capfd.readouterr()
        self.stdout += out
        self.stderr += err

    @property
    def access_lines(self) -> list[dict[str, Any]]:
        return [
            line
            for line in (
                orjson.loads(raw) for raw in self.stdout.splitlines() if raw.startswith("{")
            )
            if line.get("logger") == "stalwart.access"
        ]

    @property
    def app_lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in self.formatted.getvalue().splitlines()]

    def shipped(self) -> str:
        """Everything that leaves the process as log output."""
        return "\n".join([self.formatted.getvalue(), self.stdout, self.stderr])


@pytest.fixture(params=["configured", "all-debug"])
def capture(
    request: pytest.FixtureRequest, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> Iterator[Capture]:
    """Listed before `client` in the tests, so start-up logs are captured too."""
    ACCESS_LOG.flush()  # lines of earlier tests, if any, are not ours
    capfd.readouterr()
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    loggers = [
        item
        for item in logging.Logger.manager.loggerDict.values()
        if isinstance(item, logging.Logger)
    ]
    saved = [(lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers]
    cap = Capture(mode=request.param)
    configure_logging(make_settings(tmp_path, log_level="DEBUG", log_format="json"), cap.formatted)
    root.addHandler(cap.raw)
    if cap.mode == "all-debug":
        for lg in loggers:
            lg.setLevel(logging.DEBUG)
    try:
        yield cap
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for lg, level, handlers, propagate, disabled in saved:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate = propagate
            lg.disabled = disabled


def assert_absent(secrets: dict[str, str], where: str, haystack: str) -> None:
    for name, secret in secrets.items():
        assert secret not in haystack, f"the {name} appears in {where}"
        # Also as it would look JSON-escaped or URL-encoded.
        assert json.dumps(secret)[1:-1] not in haystack, f"the {name} appears in {where}"


async def test_api_flow_leaks_no_secret_into_any_log(
    capture: Capture, client: httpx.AsyncClient, capfd: pytest.CaptureFixture[str]
) -> None:
    tag = uuid.uuid4().hex[:10]
    email = f"leak-check-{tag}@example.com"
    password = f"Known-Passw0rd-{tag}-first"
    new_password = f"Known-Passw0rd-{tag}-second"
    wrong_password = f"Wrong-Passw0rd-{tag}-guess"
    accounts, tokens, me = "/api/v1/accounts", "/api/v1/auth/tokens", "/api/v1/me"

    statuses: list[int] = []

    async def call(method: str, url: str, expected: int, **kwargs: Any) -> httpx.Response:
        response = await client.request(method, url, **kwargs)
        statuses.append(response.status_code)
        assert response.status_code == expected, (method, url, response.text)
        return response

    signup = {"email": email, "password": password, "display_name": "Leak Check"}
    registered = await call("POST", accounts, 201, json=signup)
    await call("POST", accounts, 409, json=signup)
    # Validation errors with the password in the body: bad email, unknown field, too long.
    await call("POST", accounts, 422, json={**signup, "email": "not-an-email"})
    await call("POST", accounts, 422, json={**signup, "role": "admin"})
    await call("POST", accounts, 422, json={"email": email, "password": password * 20})
    await call("POST", tokens, 422, json={"email": email, "password": password, "extra": 1})
    malformed = f'{{"email": "{email}", "password": "{password}",'
    await call("POST", tokens, 400, content=malformed, headers={"Content-Type": "application/json"})
    # Wrong logins.
    await call("POST", tokens, 401, json={"email": email, "password": wrong_password})
    await call(
        "POST", tokens, 401, json={"email": f"nobody-{tag}@example.com", "password": password}
    )
    # The right one.
    token = (await call("POST", tokens, 201, json={"email": email, "password": password})).json()[
        "token"
    ]
    auth = {"Authorization": f"Bearer {token}"}
    # Using the token, also where clients should not put it.
    await call("GET", me, 200, headers=auth)
    await call("GET", f"{me}?access_token={token}&password={password}", 200, headers=auth)
    await call("GET", me, 401, headers={"Authorization": f"Bearer {token}x"})
    await call("GET", me, 401, headers={"Cookie": f"session={token}", "X-API-Key": token})
    await call("GET", f"{accounts}/{registered.json()['id']}", 200, headers=auth)
    note = await call("POST", "/api/v1/notes", 201, headers=auth, json={"title": "t", "body": "b"})
    await call("GET", f"/api/v1/notes/{note.json()['id']}", 200, headers=auth)
    # Password change: wrong current password, then right.
    await call(
        "PATCH",
        me,
        403,
        headers=auth,
        json={"password": new_password, "current_password": wrong_password},
    )
    await call(
        "PATCH",
        me,
        200,
        headers=auth,
        json={"password": new_password, "current_password": password},
    )
    await call("POST", tokens, 401, json={"email": email, "password": password})
    # Log out; the revoked token is refused.
    await call("DELETE", f"{tokens}/current", 204, headers=auth)
    await call("GET", me, 401, headers=auth)

    capture.collect(capfd)
    secrets = {
        "password": password,
        "new password": new_password,
        "wrong password": wrong_password,
        "token": token,
    }
    if capture.mode == "configured":
        secrets["email"] = email
    # The capture works: one access line per request, the account known once authenticated.
    access = capture.access_lines
    assert [line["http.response.status_code"] for line in access] == statuses
    assert len(statuses) == 22
    assert any(line.get("account.id") == registered.json()["id"] for line in access)
    assert_absent(secrets, "the shipped log output", capture.shipped())
    assert_absent(secrets, "a log record (before redaction)", "\n".join(capture.raw.texts))


async def test_secrets_in_an_unhandled_exception_are_redacted(
    capture: Capture, app: FastAPI, client: httpx.AsyncClient, capfd: pytest.CaptureFixture[str]
) -> None:
    tag = uuid.uuid4().hex[:10]
    password = f"Known-Passw0rd-{tag}"
    token = f"stw_{tag}Known-Token-Value"
    email = f"leak-check-{tag}@example.com"

    @app.post("/test-only/explode")
    async def explode(request: Request) -> None:
        body = await request.json()
        # A careless error message that quotes the request, as bugs do.
        raise RuntimeError(f"upstream refused {body!r} with Authorization: Bearer {token}")

    @app.post("/test-only/constraint")
    async def constraint(request: Request) -> None:
        db = request.app.state.resources.db
        async with db.session() as session:
            # A NOT NULL violation: the driver's message quotes the row and the parameters.
            await session.execute(
                text("INSERT INTO accounts (email) VALUES (:email)"), {"email": email}
            )

    exploded = await client.post(
        "/test-only/explode",
        json={"email": email, "password": password, "token": token},
        headers={"X-Request-ID": f"explode-{tag}"},
    )
    violated = await client.post("/test-only/constraint", json={})
    assert exploded.status_code == 500
    assert violated.status_code == 500
    capture.collect(capfd)

    errors = [line for line in capture.app_lines if line["logger"] == "stalwart.errors"]
    assert [line["exception.type"] for line in errors] == [
        "RuntimeError",
        "sqlalchemy.exc.IntegrityError",
    ]
    assert errors[0]["request.id"] == f"explode-{tag}"
    assert errors[0]["url.path"] == "/test-only/explode"
    assert "in explode" in errors[0]["exception.stacktrace"]
    assert "in constraint" in errors[1]["exception.stacktrace"]
    assert [line["http.response.status_code"] for line in capture.access_lines] == [500, 500]
    secrets = {"password": password, "token": token}
    if capture.mode == "configured":
        secrets["email"] = email
    assert_absent(secrets, "the shipped log output", capture.shipped())
    for response in (exploded, violated):
        assert password not in response.text
        assert "Traceback" not in response.text
