"""App/error/uvicorn logging: formats, stack traces, redaction (src/stalwart/logging_setup.py)."""

from __future__ import annotations

import gc
import io
import logging
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi import FastAPI

from stalwart.logging_setup import (
    ConsoleFormatter,
    JsonFormatter,
    configure_logging,
    route_uncaught_exceptions,
    uvicorn_log_config,
)
from stalwart.policies.errors import ErrorMiddleware
from stalwart.policies.redaction import REDACTED
from stalwart.policies.request_log import RequestLogMiddleware
from stalwart.settings import Settings

_PG = "postgresql+asyncpg://app@db.internal/app"  # production settings refuse SQLite's default path
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
PASSWORD = "pw-Correct-Horse-7781"
TOKEN = "tok_9f8e7d6c5b4a39281706"

_TOUCHED = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "sqlalchemy", "aiosqlite", "stalwart"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the other tests."""
    saved: list[tuple[logging.Logger, list[logging.Handler], int, bool, bool]] = []
    for name in _TOUCHED:
        logger = logging.getLogger(name)
        saved.append(
            (logger, list(logger.handlers), logger.level, logger.propagate, logger.disabled)
        )
    yield
    logging.captureWarnings(False)
    for logger, handlers, level, propagate, disabled in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def record(
    message: str = "hello %s",
    args: tuple[Any, ...] = ("world",),
    *,
    level: int = logging.INFO,
    exc: BaseException | None = None,
    extra: dict[str, Any] | None = None,
) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    rec = logging.getLogger("stalwart.test").makeRecord(
        "stalwart.test", level, __file__, 10, message, args, exc_info, extra=extra
    )
    rec.created = 1_700_000_000.25
    return rec


def raise_and_catch(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def failing_login(password: str) -> None:
    raise ValueError(f"login failed for password={password}")


# --- JSON format -------------------------------------------------------------------------------


def test_json_line_has_exact_fields() -> None:
    line = JsonFormatter().format(record(extra={"request.id": "r-1", "url.path": "/x"}))
    assert "\n" not in line
    assert orjson.loads(line) == {
        "timestamp": "2023-11-14T22:13:20.250Z",
        "level": "INFO",
        "logger": "stalwart.test",
        "message": "hello world",
        "request.id": "r-1",
        "url.path": "/x",
    }


def test_json_exception_fields_follow_otel() -> None:
    try:
        failing_login(PASSWORD)
    except ValueError as exc:
        line = orjson.loads(
            JsonFormatter().format(record("boom", (), level=logging.ERROR, exc=exc))
        )
    assert line["level"] == "ERROR"
    assert line["exception.type"] == "ValueError"
    assert line["exception.message"] == f"login failed for password={REDACTED}"
    stack = line["exception.stacktrace"]
    assert stack.startswith("Traceback (most recent call last):")
    assert "in failing_login" in stack
    assert stack.rstrip().endswith(f"ValueError: login failed for password={REDACTED}")
    assert PASSWORD not in orjson.dumps(line).decode()


def test_json_exception_type_is_qualified_outside_builtins() -> None:
    exc = raise_and_catch(httpx.ConnectError("refused"))
    line = orjson.loads(JsonFormatter().format(record("x", (), exc=exc)))
    assert line["exception.type"] == "httpx.ConnectError"
    assert line["exception.message"] == "refused"


def test_json_redacts_message_args_and_extras() -> None:
    rec = record(
        "login attempt %s with Authorization: Bearer %s",
        ({"email": "a@b.c", "password": PASSWORD}, TOKEN),
        extra={
            "request.id": "r-2",
            "body": {"password": PASSWORD, "nested": {"access_token": TOKEN}},
            "url": f"/cb?token={TOKEN}&state=1",
            "headers": [(b"authorization", f"Bearer {TOKEN}".encode()), (b"cookie", b"sid=1")],
        },
    )
    text = JsonFormatter().format(rec)
    assert PASSWORD not in text
    assert TOKEN not in text
    line = orjson.loads(text)
    assert line["message"] == (
        f"login attempt {{'email': 'a@b.c', 'password': {REDACTED}}} with Authorization: {REDACTED}"
    )
    assert line["body"] == {"password": REDACTED, "nested": {"access_token": REDACTED}}
    assert line["url"] == f"/cb?token={REDACTED}&state=1"
    assert line["headers"] == [["authorization", REDACTED], ["cookie", REDACTED]]
    assert line["request.id"] == "r-2"


def test_json_redacts_locals_in_a_chained_exception() -> None:
    def inner() -> None:
        raise KeyError(f"Bearer {TOKEN}")

    def outer() -> None:
        try:
            inner()
        except KeyError as exc:
            raise RuntimeError(f"while handling {{'password': '{PASSWORD}'}}") from exc

    exc = raise_and_catch(RuntimeError("placeholder"))
    try:
        outer()
    except RuntimeError as caught:
        exc = caught
    text = JsonFormatter().format(record("x", (), exc=exc))
    assert PASSWORD not in text
    assert TOKEN not in text
    stack = orjson.loads(text)["exception.stacktrace"]
    assert "direct cause of the following exception" in stack
    assert "in inner" in stack
    assert "in outer" in stack


def test_json_never_reuses_an_unredacted_cached_traceback() -> None:
    exc = raise_and_catch(ValueError(f"password={PASSWORD}"))
    rec = record("x", (), exc=exc)
    rec.exc_text = f"cached by another formatter: password={PASSWORD}"
    assert PASSWORD not in JsonFormatter().format(rec)


def test_json_serialises_odd_extras() -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<Thing>"

    line = orjson.loads(JsonFormatter().format(record(extra={"thing": Thing(), "n": 3})))
    assert line["thing"] == "<Thing>"
    assert line["n"] == 3


# --- console format ----------------------------------------------------------------------------


def test_console_line() -> None:
    rec = record(extra={"request.id": "r-3", "url.path": "/y"})
    assert ConsoleFormatter().format(rec) == (
        "2023-11-14T22:13:20.250Z INFO     stalwart.test: hello world  request.id=r-3 url.path=/y"
    )


def test_console_has_redacted_stack_trace() -> None:
    try:
        failing_login(PASSWORD)
    except ValueError as exc:
        text = ConsoleFormatter().format(
            record(f"failed with token={TOKEN}", (), level=logging.ERROR, exc=exc)
        )
    first, *rest = text.splitlines()
    assert first == f"2023-11-14T22:13:20.250Z ERROR    stalwart.test: failed with token={REDACTED}"
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == f"ValueError: login failed for password={REDACTED}"
    assert PASSWORD not in text
    assert TOKEN not in text


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_json_for_app_and_uvicorn() -> None:
    stream = io.StringIO()
    configure_logging(settings(log_format="json", log_level="INFO"), stream)
    logging.getLogger("stalwart.anything").info("app says %s", "hi")
    logging.getLogger("stalwart.anything").debug("too detailed")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 123)
    logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET / HTTP/1.1" 200')
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["logger"], line["level"], line["message"]) for line in lines] == [
        ("stalwart.anything", "INFO", "app says hi"),
        ("uvicorn.error", "INFO", "Started server process [123]"),
    ]
    assert all(TIMESTAMP.fullmatch(line["timestamp"]) for line in lines)


@pytest.mark.usefixtures("restore_logging")
def test_configure_logging_console_and_level() -> None:
    stream = io.StringIO()
    configure_logging(settings(log_format="console", log_level="WARNING"), stream)
    logging.getLogger("stalwart.x").info("hidden")
    logging.getLogger("stalwart.x").warning("shown")
    (line,) = stream.getvalue().splitlines()
    assert re.fullmatch(r"\S+Z WARNING  stalwart\.x: shown", line)


@pytest.mark.usefixtures("restore_logging")
def test_debug_level_keeps_chatty_data_libraries_quiet() -> None:
    stream = io.StringIO()
    configure_logging(settings(log_level="DEBUG"), stream)
    assert logging.getLogger("stalwart.x").isEnabledFor(logging.DEBUG)
    # SQL parameters (emails, hashes) and driver operations never reach the log.
    assert not logging.getLogger("sqlalchemy.engine.Engine").isEnabledFor(logging.INFO)
    assert not logging.getLogger("aiosqlite").isEnabledFor(logging.INFO)
    assert logging.getLogger("sqlalchemy.engine.Engine").isEnabledFor(logging.WARNING)


@pytest.mark.usefixtures("restore_logging")
def test_uvicorn_config_applies_our_log_config() -> None:
    stream = io.StringIO()
    config = uvicorn.Config(
        "tests.test_logging_setup:settings",
        log_config=uvicorn_log_config(settings(log_format="json"), stream),
        access_log=False,
    )
    assert config.access_log is False
    logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
    (line,) = (orjson.loads(raw) for raw in stream.getvalue().splitlines())
    assert line["logger"] == "uvicorn.error"
    assert line["level"] == "WARNING"


def test_log_config_defaults_to_stderr() -> None:
    config = uvicorn_log_config(settings())
    assert config["handlers"]["stalwart"]["stream"] == "ext://sys.stderr"
    assert config["formatters"]["stalwart"]["()"] == "stalwart.logging_setup.JsonFormatter"
    console = uvicorn_log_config(settings(log_format="console"))
    assert console["formatters"]["stalwart"]["()"] == "stalwart.logging_setup.ConsoleFormatter"
    assert config["loggers"]["uvicorn.access"]["propagate"] is False


# --- the 500 path: stack trace in the log with the request id, never in the response ------------


@pytest.mark.anyio
@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("env", ["production", "development"])
async def test_unhandled_error_logged_with_request_id_path_and_redacted_stack(env: str) -> None:
    app = FastAPI()

    @app.post("/login")
    async def login() -> None:
        failing_login(PASSWORD)

    app.add_middleware(ErrorMiddleware, debug=False)
    app.add_middleware(RequestLogMiddleware, sink=lambda line: None)
    stream = io.StringIO()
    configure_logging(settings(log_format="json", env=env, database_url=_PG), stream)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/login?token=" + TOKEN, headers={"X-Request-ID": "rid-500"})
    assert response.status_code == 500
    assert "Traceback" not in response.text
    assert "failing_login" not in response.text
    lines = [orjson.loads(raw) for raw in stream.getvalue().splitlines()]
    (line,) = (line for line in lines if line["logger"] == "stalwart.errors")
    assert line["level"] == "ERROR"
    assert line["request.id"] == "rid-500"
    assert line["url.path"] == "/login"
    assert line["exception.type"] == "ValueError"
    if env == "production":
        # No stack trace, message or file path in a production log line: type and fingerprint.
        assert "exception.stacktrace" not in line
        assert "exception.message" not in line
        assert re.fullmatch(r"[0-9a-f]{16}", line["exception.fingerprint"])
        assert "failing_login" not in stream.getvalue()
        assert ".py" not in stream.getvalue()
    else:
        assert "in failing_login" in line["exception.stacktrace"]
    assert PASSWORD not in stream.getvalue()
    assert TOKEN not in stream.getvalue()


def test_production_exception_fields_name_no_library_sql_or_path() -> None:
    def driver() -> None:
        raise httpx.ConnectError('SELECT * FROM accounts WHERE email = \'a@b.c\' (/srv/app/db.py)')

    def execute() -> None:
        driver()

    def query() -> None:
        execute()

    def raised(where: Any) -> BaseException:
        try:
            where()
        except BaseException as exc:
            return exc
        raise AssertionError("did not raise")

    def via_head() -> None:  # another way in (the request's path through the middleware)
        query()

    first, again, other = raised(query), raised(via_head), raised(lambda: failing_login(PASSWORD))
    lines = [
        JsonFormatter(production=True).format(record("db down", (), level=logging.ERROR, exc=exc))
        for exc in (first, again, other)
    ]
    docs = [orjson.loads(line) for line in lines]
    assert docs[0]["exception.type"] == "ConnectError"
    assert set(docs[0]) == {"timestamp", "level", "logger", "message", "exception.type", "exception.fingerprint"}
    for text in ("httpx", "SELECT", "/srv/app", "Traceback", ".py", PASSWORD):
        assert text not in "".join(lines), text
    # The same failure (type and innermost frames) has the same fingerprint, whichever way it
    # was reached; another failure has another.
    assert docs[0]["exception.fingerprint"] == docs[1]["exception.fingerprint"]
    assert docs[0]["exception.fingerprint"] != docs[2]["exception.fingerprint"]
    console = ConsoleFormatter(production=True).format(record("db down", (), level=logging.ERROR, exc=first))
    assert "\n" not in console
    assert console.endswith(f"exception.type=ConnectError exception.fingerprint={docs[0]['exception.fingerprint']}")


@pytest.mark.usefixtures("restore_logging")
def test_warnings_are_routed_through_the_formatter() -> None:
    stream = io.StringIO()
    configure_logging(settings(log_format="json"), stream)
    logging.getLogger("py.warnings").warning("DeprecationWarning: password=%s", PASSWORD)
    (line,) = (orjson.loads(raw) for raw in stream.getvalue().splitlines())
    assert line["logger"] == "py.warnings"
    assert PASSWORD not in line["message"]
    assert sys.stderr is not stream


@pytest.mark.usefixtures("restore_logging")
def test_production_warnings_carry_no_path_or_source_line() -> None:
    stream = io.StringIO()
    configure_logging(settings(log_format="json", env="production", database_url=_PG), stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit("old call, password=" + PASSWORD, DeprecationWarning, "/srv/app/lib/mod.py", 12)
    (line,) = (orjson.loads(raw) for raw in stream.getvalue().splitlines())
    assert line["logger"] == "py.warnings"
    assert line["message"] == f"DeprecationWarning: old call, password={REDACTED}"
    assert "/srv/app" not in stream.getvalue()


@pytest.fixture
def restore_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """route_uncaught_exceptions replaces process-wide hooks: monkeypatch puts them back."""
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)


@pytest.mark.usefixtures("restore_logging", "restore_hooks")
def test_uncaught_exceptions_are_log_lines_without_a_trace_in_production() -> None:
    """Python prints these as bare tracebacks on stderr (file paths, library names)."""
    stream = io.StringIO()
    configure_logging(settings(log_format="json", env="production", database_url=_PG), stream)
    route_uncaught_exceptions()

    def fails() -> None:
        raise RuntimeError("Event loop is closed, password=" + PASSWORD)

    thread = threading.Thread(target=fails, name="worker-1")
    thread.start()
    thread.join()

    class Leaky:
        def __del__(self) -> None:
            raise ValueError("in __del__, password=" + PASSWORD)

    Leaky()
    gc.collect()
    lines = [orjson.loads(raw) for raw in stream.getvalue().splitlines()]
    assert [(line["logger"], line["message"], line["exception.type"]) for line in lines] == [
        ("stalwart.uncaught", "uncaught exception in thread worker-1", "RuntimeError"),
        ("stalwart.uncaught", "exception that could not be raised, in function", "ValueError"),
    ]
    text = stream.getvalue()
    assert "Traceback" not in text
    assert PASSWORD not in text
    assert "test_logging_setup.py" not in text
    assert all(len(line["exception.fingerprint"]) >= 8 for line in lines)
