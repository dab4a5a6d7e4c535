"""Logging configuration for everything except the access log: app logs, errors, uvicorn.

Two formats, chosen by `settings.log_format`:

- `json`: one JSON object per line with OpenTelemetry field names: `timestamp` (ISO 8601 UTC,
  milliseconds), `level`, `logger`, `message`, any `extra={...}` fields as given (for example
  `request.id`, `url.path`), and for exceptions `exception.type`, `exception.message` and
  `exception.stacktrace`.
- `console`: one human-readable line (plus the stack trace) for development.

Both formatters pass the message, the extras and the exception text through
`stalwart.policies.redaction`, so a password or token that reaches a log call is replaced
before it is written. Stack traces never reach a response (see policies/errors.py); outside
production they go to the log. In production (`production=True`, set from the settings) an
exception is logged as its class name and a fingerprint only: no stack trace, no message (a
driver's message quotes SQL and parameters), no module path (which names the library).
The fingerprint, a hash of the exception's type and of the frames it went through, is the
same for every occurrence of the same failure: operators group by it, and reproduce with a
non-production environment to see the trace. These logs go to stderr; the per-request access lines
(policies/request_log.py) go to stdout on their own fast path.

`stalwart serve` passes `uvicorn_log_config(settings)` as uvicorn's `log_config` (so worker
processes configure themselves the same way) with `access_log=False`: our access log replaces
uvicorn's. `configure_logging(settings)` applies the same configuration in-process.
"""

from __future__ import annotations

import hashlib
import logging
import logging.config
import re
import sys
import threading
from types import TracebackType
from typing import IO, Any

import orjson

from stalwart.policies.redaction import redact, redact_text
from stalwart.policies.timestamps import utc_timestamp
from stalwart.settings import Settings

__all__ = [
    "ConsoleFormatter",
    "JsonFormatter",
    "configure_logging",
    "route_uncaught_exceptions",
    "uvicorn_log_config",
]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName", "color_message"}

# Libraries that log request parameters, SQL parameters or header values at DEBUG/INFO. They
# stay at WARNING whatever the level, so DEBUG in development cannot leak personal data.
_QUIET_LOGGERS = ("sqlalchemy", "aiosqlite", "asyncpg", "hpack", "multipart", "watchfiles")


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_FIELDS and not key.startswith("_")
    }


# Innermost frames hashed: where the failure is. The outer ones are the way the request came
# through the middleware (HEAD or GET, a rate-limit lease or a store call), which varies.
_FINGERPRINT_FRAMES = 3


# warnings.formatwarning: "<file>:<line>: <Category>: <message>\n  <source line>\n".
_WARNING = re.compile(r"^.*?:\d+: (?P<what>[^\n]*)", re.DOTALL)


def _message(record: logging.LogRecord, production: bool) -> str:
    message = record.getMessage()
    if production and record.name == "py.warnings":
        # The category and text only: not the file path or the source line it quotes.
        match = _WARNING.match(message)
        message = match["what"] if match else message.split("\n", 1)[0]
    return redact_text(message)


def _fingerprint(exc_type: type[BaseException], tb: TracebackType | None) -> str:
    frames: list[str] = []
    while tb is not None:
        # Module and function, not file path or line: the same failure keeps its fingerprint
        # wherever the release is installed and across edits elsewhere in the file.
        code = tb.tb_frame.f_code
        frames.append(f"{tb.tb_frame.f_globals.get('__name__', '?')}.{code.co_name}")
        tb = tb.tb_next
    key = ";".join([f"{exc_type.__module__}.{exc_type.__qualname__}", *frames[-_FINGERPRINT_FRAMES:]])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _exception_fields(
    formatter: logging.Formatter, record: logging.LogRecord, production: bool = False
) -> dict[str, str] | None:
    if not record.exc_info or record.exc_info[1] is None:
        return None
    exc_type, exc, tb = record.exc_info
    assert exc_type is not None
    module = exc_type.__module__
    qualname = exc_type.__qualname__
    if production:
        return {"exception.type": qualname, "exception.fingerprint": _fingerprint(exc_type, tb)}
    return {
        "exception.type": qualname if module == "builtins" else f"{module}.{qualname}",
        "exception.message": redact_text(str(exc)),
        # Formatted here rather than via record.exc_text, which another handler may have
        # filled with an unredacted rendering.
        "exception.stacktrace": redact_text(formatter.formatException(record.exc_info)),
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line, OpenTelemetry field names, secrets redacted."""

    def __init__(self, production: bool = False) -> None:
        super().__init__()
        self.production = production

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "timestamp": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record, self.production),
        }
        extras = _extras(record)
        if extras:
            doc.update(redact(extras))
        exception = _exception_fields(self, record, self.production)
        if exception:
            doc.update(exception)
        if record.stack_info and not self.production:
            doc["code.stacktrace"] = redact_text(self.formatStack(record.stack_info))
        return orjson.dumps(doc, default=repr).decode()


class ConsoleFormatter(logging.Formatter):
    """`2025-01-02T03:04:05.678Z INFO     logger: message  key=value ...` plus the stack trace
    (in production the exception's class name and fingerprint instead)."""

    def __init__(self, production: bool = False) -> None:
        super().__init__()
        self.production = production

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{utc_timestamp(record.created)} {record.levelname:<8} {record.name}: "
            f"{_message(record, self.production)}"
        )
        extras = _extras(record)
        if extras:
            line += "  " + " ".join(f"{k}={v}" for k, v in redact(extras).items())
        exception = _exception_fields(self, record, self.production)
        if exception and self.production:
            line += "  " + " ".join(f"{k}={v}" for k, v in exception.items())
        elif exception:
            line += "\n" + exception["exception.stacktrace"]
        if record.stack_info and not self.production:
            line += "\n" + redact_text(self.formatStack(record.stack_info))
        return line


def uvicorn_log_config(settings: Settings, stream: IO[str] | str | None = None) -> dict[str, Any]:
    """A `logging.config.dictConfig` dict for the app and uvicorn (pass as uvicorn's log_config).

    `stream` defaults to stderr; tests pass an in-memory stream.
    """
    formatter = JsonFormatter if settings.log_format == "json" else ConsoleFormatter
    level = settings.log_level
    quiet = level if logging.getLevelName(level) >= logging.WARNING else "WARNING"
    handler: dict[str, Any] = {
        "class": "logging.StreamHandler",
        "formatter": "stalwart",
        "stream": stream if stream is not None else "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "stalwart": {
                "()": f"{formatter.__module__}.{formatter.__qualname__}",
                "production": settings.is_production,
            }
        },
        "handlers": {"stalwart": handler},
        "root": {"handlers": ["stalwart"], "level": level},
        "loggers": {
            # uvicorn's loggers carry their own handlers in its default config: route them to ours.
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            # Replaced by policies/request_log.py; silent even without uvicorn's access_log=False.
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            **{name: {"level": quiet} for name in _QUIET_LOGGERS},
            # Seven lines per start-up about its own plugins; its migration steps stay at INFO.
            "alembic.runtime.plugins": {"level": "WARNING"},
        },
    }


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> None:
    """Configure stdlib logging for this process from `settings` (idempotent)."""
    logging.config.dictConfig(uvicorn_log_config(settings, stream))
    logging.captureWarnings(True)


def route_uncaught_exceptions() -> None:
    """Send exceptions nothing caught through the configured formatter, not to raw stderr.

    Python prints them (a thread that raised, an error in `__del__` or in a callback of a closed
    event loop) as a bare traceback on stderr, which in production would put a stack trace and
    file paths in the log. As log records they get the formatter's treatment: redacted, and in
    production the exception's class and fingerprint only.
    """
    uncaught = logging.getLogger("stalwart.uncaught")

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "unknown"
        exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
        uncaught.error("uncaught exception in thread %s", name, exc_info=exc_info)

    def unraisable_hook(args: sys.UnraisableHookArgs) -> None:
        exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
        # `object` is whatever raised (a method, a coroutine): its type says enough and its repr
        # may hold data.
        where = type(args.object).__name__ if args.object is not None else "unknown"
        uncaught.error("exception that could not be raised, in %s", where, exc_info=exc_info)

    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
