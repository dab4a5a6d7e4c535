"""A guard for every route at once: no NUL character in a path or query parameter.

PostgreSQL text cannot hold NUL, so a `%00` compared with a column fails in the driver (a
500) where SQLite simply finds nothing. Bodies are covered by the models (control characters
refused); this covers the parameters, including ones a route does not declare.

Pure ASGI, just outside the router, rather than a router dependency: FastAPI's dependency
resolution cost about 12 us on every request for what is, in the common case, three
substring tests on the raw path and query string. The parameter's name for the 422 is worked
out only when a NUL is there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from starlette.datastructures import QueryParams
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from stalwart.policies.problem import send_problem

__all__ = ["NulParameterGuard"]

_MESSAGE = "NUL characters are not allowed"


class NulParameterGuard:
    """Answer 422 (problem+json, one error per offending parameter) when a NUL is in the
    decoded path or in the query string of a request some route takes; pass everything else
    straight on (an unknown path is the router's 404)."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        # The routes whose path parameters a 422 can name (matched only when a NUL is there).
        self.routes = tuple(routes)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the inner app's awaitable: one coroutine frame less per
        # request than `async def` (see stalwart/policies/exchange.py on the per-layer costs).
        if scope["type"] == "http":
            query: bytes = scope.get("query_string", b"")
            # The path is already percent-decoded; the query string is not.
            if (b"%00" in query or b"\x00" in query or "\x00" in scope["path"]) and self._routed(scope):
                return send_problem(
                    scope,
                    send,
                    422,
                    title="Validation failed",
                    detail="One or more fields are invalid.",
                    extra={"errors": self._errors(scope, query)},
                )
        return self.app(scope, receive, send)

    def _routed(self, scope: Scope) -> bool:
        """Whether a route takes this path (any method): a path no route takes is the router's
        404, whatever it holds."""
        return any(route.matches(scope)[0] is not Match.NONE for route in self.routes)

    def _errors(self, scope: Scope, query: bytes) -> list[dict[str, str]]:
        errors: list[dict[str, str]] = []
        if "\x00" in scope["path"]:
            errors.append({"pointer": self._path_pointer(scope), "detail": _MESSAGE})
        if b"%00" in query or b"\x00" in query:
            for name, value in QueryParams(query.decode("latin-1")).multi_items():
                if "\x00" in name or "\x00" in value:
                    errors.append({"pointer": f"query:{name.replace(chr(0), '')}", "detail": _MESSAGE})
        return errors

    def _path_pointer(self, scope: Scope) -> str:
        """`path:<parameter>` for the route the path would reach (any method), else `path`."""
        for route in self.routes:
            match, child = route.matches(scope)
            if match is not Match.NONE:
                for name, value in child.get("path_params", {}).items():
                    if isinstance(value, str) and "\x00" in value:
                        return f"path:{name}"
        return "path"
