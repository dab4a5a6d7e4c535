"""Every error as RFC 9457 problem+json: HTTP errors, validation errors, unhandled exceptions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from stalwart.data.errors import UNAVAILABLE_ERRORS
from stalwart.policies.exchange import watch
from stalwart.policies.problem import (
    MALFORMED_JSON,
    PROBLEM_CONTENT_TYPE,
    problem_body,
    send_problem,
)
from stalwart.settings import Settings

__all__ = ["ErrorMiddleware", "ProblemResponse", "install_error_handlers", "validation_problems"]

logger = logging.getLogger("stalwart.errors")

# Pydantic error types that mean "this is not JSON at all" rather than "this JSON is invalid".
_MALFORMED = {"json_invalid", "json_type"}


class ProblemResponse(Response):
    media_type = PROBLEM_CONTENT_TYPE.decode()

    def __init__(
        self,
        request: Request,
        status: int,
        *,
        title: str | None = None,
        detail: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        import orjson

        body = problem_body(
            status,
            title=title,
            detail=detail,
            type_=type_,
            instance=request.url.path,
            request_id=getattr(request.state, "request_id", None),
            extra=extra,
        )
        super().__init__(orjson.dumps(body), status_code=status, headers=headers)


def _pointer(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """JSON pointer (RFC 6901) of a pydantic error location, without the `body` prefix."""
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    elif parts and parts[0] in ("query", "path", "header", "cookie"):
        return f"{parts[0]}:" + ".".join(str(p) for p in parts[1:])
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def validation_problems(errors: Any) -> list[dict[str, str]]:
    # Only the location and message: never the offending input, which may be a password.
    return [{"pointer": _pointer(err.get("loc", ())), "detail": str(err.get("msg", ""))} for err in errors]


def _malformed_json(request: Request) -> Response:
    title, detail, type_ = MALFORMED_JSON
    return ProblemResponse(request, 400, title=title, detail=detail, type_=type_)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's "There was an error parsing the body": bytes that are not UTF-8 are not
        # JSON either (RFC 8259), the same problem as any other unparsable body.
        return _malformed_json(request)
    headers = dict(exc.headers) if exc.headers else None
    detail = exc.detail if isinstance(exc.detail, str) else None
    # Exceptions may carry problem members of their own (the login limiter's violated-policies).
    extra = getattr(exc, "extra", None)
    return ProblemResponse(
        request, exc.status_code, detail=detail, headers=headers,
        type_=getattr(exc, "problem_type", None), extra=extra if isinstance(extra, dict) else None,
    )


async def _validation_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(err.get("type") in _MALFORMED for err in errors):
        return _malformed_json(request)
    return ProblemResponse(
        request,
        422,
        title="Validation failed",
        detail="One or more fields are invalid.",
        extra={"errors": validation_problems(errors)},
    )


async def _unavailable(request: Request, exc: Exception) -> Response:
    logger.error(
        "dependency unavailable: %s", type(exc).__name__,
        extra={"request.id": getattr(request.state, "request_id", None), "url.path": request.url.path},
    )
    return ProblemResponse(
        request,
        503,
        title="Service Unavailable",
        detail="A dependency is unavailable. Retry after the delay in Retry-After.",
        headers={"Retry-After": "2"},
    )


def install_error_handlers(app: Starlette, settings: Settings) -> None:
    app.add_exception_handler(HTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_exception)
    for exc_type in UNAVAILABLE_ERRORS:
        app.add_exception_handler(exc_type, _unavailable)


class ErrorMiddleware:
    """Turn any unhandled exception into a 500 problem; the stack trace goes to the log only.

    Starlette's ServerErrorMiddleware re-raises after answering, so the server logs the
    exception a second time in its own format; this layer answers and stops there.
    """

    def __init__(self, app: ASGIApp, debug: bool = False) -> None:
        self.app = app
        self.debug = debug

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange, send = watch(scope, send)
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            # The server cancels a request still running when its graceful-shutdown timeout
            # ends: one stuck on a dependency that never answered. uvicorn would answer it with
            # a plain-text 500; the client gets the 503 problem any other dependency failure
            # gets (retry elsewhere), then the cancellation goes on.
            if not exchange.status:
                with contextlib.suppress(Exception):
                    await send_problem(
                        scope,
                        send,
                        503,
                        title="Service Unavailable",
                        detail="The server stopped before this request completed; retry it.",
                        headers=[(b"retry-after", b"2")],
                    )
            raise
        except Exception as exc:
            state = scope.get("state") or {}
            logger.error(
                "unhandled exception",
                exc_info=exc,
                extra={"request.id": state.get("request_id"), "url.path": scope.get("path")},
            )
            if exchange.status:
                # Headers are gone; the server will close the connection mid-body.
                raise
            extra = None
            if self.debug:
                extra = {"traceback": traceback.format_exception(exc)}
            await send_problem(
                scope,
                send,
                500,
                title="Internal Server Error",
                detail="The server could not complete the request. Quote the request id when reporting it.",
                extra=extra,
            )
