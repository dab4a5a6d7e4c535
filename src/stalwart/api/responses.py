"""OpenAPI descriptions of the problem+json error responses each operation can give."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["Problem", "ValidationProblem", "errors"]


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None
    request_id: str | None


class FieldProblem(BaseModel):
    pointer: str
    detail: str


class ValidationProblem(Problem):
    errors: list[FieldProblem]


_DESCRIPTIONS = {
    400: "Malformed request (for example, a body that is not JSON)",
    401: "Missing, invalid, expired or revoked bearer token",
    403: "Authenticated but not allowed",
    404: "No such resource (or not yours)",
    409: "Conflict with the current state",
    412: "The resource changed since the version in If-Match",
    413: "Request body too large",
    415: "Content-Type is not application/json",
    422: "The request is well-formed but a field is invalid",
    429: "Rate limit exceeded",
    503: "A dependency is unavailable; retry after the given delay",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries documenting problem+json errors for the given status codes."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in (*codes, 429, 503):
        model = ValidationProblem if code == 422 else Problem
        # Declared as JSON here; stalwart.api.openapi renames the media type to
        # application/problem+json, which FastAPI cannot do from a model alone.
        out[code] = {"description": _DESCRIPTIONS[code], "model": model}
    return out
