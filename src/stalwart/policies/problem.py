"""RFC 9457 problem details, rendered without Starlette's Response machinery.

Middleware that refuses a request (413, 415, 429, 308...) sends its problem with
`send_problem`, so every layer produces the same shape: `type`, `title`, `status`,
`detail`, `instance`, `request_id`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from starlette.types import Scope, Send

__all__ = [
    "MALFORMED_JSON",
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_TYPE_BASE",
    "problem_body",
    "problem_type",
    "request_id_of",
    "send_problem",
]

PROBLEM_CONTENT_TYPE = b"application/problem+json"
# Problem types are relative URIs under the API docs; clients match on the last segment.
PROBLEM_TYPE_BASE = "/problems/"


def problem_type(slug: str) -> str:
    return PROBLEM_TYPE_BASE + slug


# (title, detail, type) of the one problem for a body that is not JSON, whichever layer finds it
# (the body limit before the app, the error handlers after the app's parser).
MALFORMED_JSON = ("Malformed JSON", "The request body is not valid JSON.", problem_type("malformed-json"))


_SLUGS: dict[int, str] = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    412: "precondition-failed",
    413: "content-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
    428: "precondition-required",
    429: "quota-exceeded",
    500: "internal-error",
    503: "service-unavailable",
}


def request_id_of(scope: Scope) -> str | None:
    state = scope.get("state")
    if isinstance(state, Mapping):
        rid = state.get("request_id")
        return rid if isinstance(rid, str) else None
    return None


def problem_body(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type_: str | None = None,
    instance: str | None = None,
    request_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": type_ or problem_type(_SLUGS.get(status, "error")),
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail or HTTPStatus(status).description or HTTPStatus(status).phrase,
        "instance": instance,
        "request_id": request_id,
    }
    if extra:
        body.update(extra)
    return body


async def send_problem(
    scope: Scope,
    send: Send,
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type_: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Send a complete problem+json response on a raw ASGI channel."""
    body = orjson.dumps(
        problem_body(
            status,
            title=title,
            detail=detail,
            type_=type_,
            instance=scope.get("path"),
            request_id=request_id_of(scope),
            extra=extra,
        )
    )
    raw_headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})
