"""Request body limits: size while streaming, JSON content type, JSON nesting depth.

* Size (`max_body_bytes`, default 1 MiB). A `Content-Length` above the limit gets a 413
  problem at once: nothing is read and the app never runs. A body without a length
  (chunked) is counted as it streams; the moment it crosses the limit the app's next
  `receive()` raises `BodyTooLarge` (an `HTTPException(413)`, so the app's own problem
  handler answers, and FastAPI re-raises it from body parsing) instead of returning a
  chunk: the app never gets a truncated body that looks complete. Whatever the app does
  with that exception, once the limit is crossed the client gets a 413 problem from this
  middleware unless the app itself answered 413.
* Content type. A request with a body (`Content-Length` > 0 or `Transfer-Encoding`) whose
  method is POST/PUT/PATCH under a JSON prefix (`/api/`) must be `application/json` or
  `application/*+json`; anything else gets a 415 problem with `Accept: application/json`.
* Nesting depth (`max_json_depth`). Checked HERE, on the whole body, before the app runs:
  for those JSON requests the middleware reads the body (bounded by the size limit, so
  at most `max_body_bytes` held) and replays it to the app as one message. The JSON
  endpoint parses the whole body anyway, so buffering costs one copy and no latency, and
  the app's JSON parser never sees a document deeper than the limit. A body deeper than
  the limit gets a 400 problem (`/problems/json-too-deep`): it is refused before parsing,
  like malformed JSON. The scan counts `[`/`{` outside strings with C-speed bytes
  operations only (escapes and strings removed by regex, bracket pairs peeled level by level),
  and is skipped when the body holds no more brackets than the limit.
* Encoding. JSON is UTF-8 (RFC 8259): a buffered JSON body holding a NUL byte (UTF-16 or
  UTF-32, which the app's parser would otherwise accept) gets the malformed-JSON problem.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Collection

from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.policies.problem import MALFORMED_JSON, problem_type, send_problem
from stalwart.settings import Settings

__all__ = ["BodyLimitMiddleware", "BodyTooLarge", "body_limit_middleware", "json_depth_exceeds"]

# Escapes go first, so that a string is then just quote to quote; an unterminated string runs
# to the end. Both patterns consume each byte once: linear whatever the input, no retry from
# every quote of a hostile body.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*+"?')
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_FOLD = bytes.maketrans(b"{}", b"[]")
_JSON_METHODS = frozenset({"POST", "PUT", "PATCH"})
_ACCEPT_JSON = (b"accept", b"application/json")
_BODY_HEADERS = frozenset({b"content-length", b"content-type", b"transfer-encoding"})
_HTTP1 = frozenset({"1.0", "1.1"})


class BodyTooLarge(HTTPException):
    """The request body crossed the limit while the app was reading it."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"The request body exceeds {limit} bytes.")


def json_depth_exceeds(body: bytes, max_depth: int) -> bool:
    """True when `body` nests arrays/objects deeper than `max_depth` (strings ignored)."""
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    if b"\\" in body:
        body = _ESCAPE.sub(b"", body)
    brackets = _STRING.sub(b"", body).translate(_FOLD, _NOT_BRACKETS)
    # Each pass removes the innermost pairs, so one nesting level: pairs left after
    # `max_depth` passes sit deeper than the limit.
    for _ in range(max_depth):
        peeled = brackets.replace(b"[]", b"")
        if len(peeled) == len(brackets):
            return False
        brackets = peeled
    return b"[]" in brackets


def _is_json(content_type: bytes) -> bool:
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


class BodyLimitMiddleware:
    """Enforce body size, JSON content type and JSON depth; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = 1_048_576,
        max_json_depth: int = 32,
        json_path_prefixes: Collection[str] = ("/api/",),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.json_path_prefixes = tuple(json_path_prefixes)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the inner app's awaitable: one coroutine frame less per
        # request than `async def` (see policies/exchange.py on the per-layer costs).
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        content_length: int | None = None
        content_type: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            # One set lookup skips the headers of no interest here (nearly all of them).
            if name in _BODY_HEADERS:
                if name == b"content-length":
                    content_length = int(value) if value.isdigit() else None
                elif name == b"content-type":
                    content_type = value
                else:
                    chunked = True
        if not chunked:
            if content_length is None:
                # HTTP/1.x without a length or chunking has no body (a GET, nearly always):
                # the app gets the server's own receive, nothing wrapped. HTTP/2 may stream a
                # body anyway, so it is counted below.
                if scope.get("http_version") in _HTTP1:
                    return self.app(scope, receive, send)
            elif content_length > self.max_body_bytes:
                return self._too_large(scope, send)
            elif content_length == 0:
                return self.app(scope, receive, send)
        elif content_length is not None and content_length > self.max_body_bytes:
            return self._too_large(scope, send)
        if scope["method"] in _JSON_METHODS and scope["path"].startswith(self.json_path_prefixes):
            if content_type is not None and _is_json(content_type):
                return self._buffered_json(scope, receive, send)
            if chunked or content_length:
                return send_problem(
                    scope,
                    send,
                    415,
                    title="Unsupported Media Type",
                    detail="This endpoint accepts application/json request bodies only.",
                    headers=[_ACCEPT_JSON],
                )
        return self._streaming(scope, receive, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        await send_problem(
            scope,
            send,
            413,
            title="Content Too Large",
            detail=f"The request body exceeds the limit of {self.max_body_bytes} bytes.",
            extra={"max_bytes": self.max_body_bytes},
        )

    async def _buffered_json(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away: nobody to answer
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        if b"\x00" in body:
            # JSON is UTF-8 (RFC 8259 §8.1). The app's parser would also take UTF-16 and -32,
            # which no UTF-8 JSON can be mistaken for: they hold NUL bytes, which UTF-8 JSON
            # never does (a NUL in a string is escaped).
            title, detail, type_ = MALFORMED_JSON
            await send_problem(scope, send, 400, title=title, detail=detail, type_=type_)
            return
        if json_depth_exceeds(body, self.max_json_depth):
            await send_problem(
                scope,
                send,
                400,
                title="JSON nesting too deep",
                detail=f"The JSON body nests deeper than {self.max_json_depth} levels.",
                type_=problem_type("json-too-deep"),
                extra={"max_depth": self.max_json_depth},
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _streaming(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_bytes
        size = 0
        exceeded = False
        response_started = False
        swallowed = False

        async def counted_receive() -> Message:
            nonlocal size, exceeded
            if exceeded:
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started, swallowed
            if swallowed:
                return
            if message["type"] == "http.response.start":
                if exceeded and message["status"] != 413:
                    # The app swallowed BodyTooLarge: its answer was built on a partial body.
                    swallowed = True
                    response_started = True
                    await self._too_large(scope, send)
                    return
                response_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            if response_started:
                raise
            await self._too_large(scope, send)
            return
        if exceeded and not response_started:
            await self._too_large(scope, send)


def body_limit_middleware(settings: Settings) -> Middleware:
    """BodyLimitMiddleware configured from `settings` (slot 10 of the policy stack)."""
    return Middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_json_depth=settings.max_json_depth,
    )
