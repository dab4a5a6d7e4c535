"""A guard shared by every operation: no NUL character in a path or query parameter.

PostgreSQL text cannot hold NUL, so a `%00` compared with a column fails in the driver (a
500) where SQLite simply finds nothing. Bodies are covered by the models (control characters
refused); this covers the parameters, for every route at once.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError

__all__ = ["refuse_nul"]


async def refuse_nul(request: Request) -> None:
    errors = [
        {"loc": (where, name), "msg": "NUL characters are not allowed", "type": "string_nul"}
        for where, items in (
            ("path", request.path_params.items()),
            ("query", request.query_params.multi_items()),
        )
        for name, value in items
        if isinstance(value, str) and "\x00" in value
    ]
    if errors:
        raise RequestValidationError(errors)
