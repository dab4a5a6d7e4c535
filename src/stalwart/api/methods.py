"""HTTP method semantics the router does not give on its own (RFC 9110).

* HEAD wherever GET works (§9.3.2: a server must support both). FastAPI routes answer only
  the methods they declare, so `HeadAsGet`, just outside the router, routes a HEAD request as
  its GET and drops the body: the same status and fields, Content-Length included. Routes and
  mounts that answer HEAD themselves (static files: no body read, no Range on HEAD) get it
  unchanged, and so do the GET routes whose every read is recorded in the audit trail (a
  data export, a backup download, the audit log): a HEAD must not leave a record of a read
  that sent nothing, so those answer HEAD with 405.
* A 405 names every method the resource allows (§15.5.6). Starlette's router answers from the
  first route whose path matched, so `PUT /api/v1/notes` said `Allow: POST` although GET works
  too; `MethodNotAllowed` collects the methods of every route that matches the path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.policies.errors import ProblemResponse

__all__ = ["HeadAsGet", "MethodNotAllowed"]

_ORDER = {method: index for index, method in enumerate(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"))}


class HeadAsGet:
    """Answer HEAD with the GET route's status and fields and no body (see the module doc)."""

    def __init__(self, app: ASGIApp, no_head: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.no_head = tuple(no_head)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the inner app's awaitable for everything but HEAD.
        if scope["type"] != "http" or scope["method"] != "HEAD" or self._answered_as_is(scope):
            return self.app(scope, receive, send)
        return self._head(scope, receive, send)

    def _answered_as_is(self, scope: Scope) -> bool:
        # Only on HEAD requests: a scan of the app's own table and of the no-HEAD routes.
        app = scope.get("app")
        own = getattr(getattr(app, "router", None), "routes", ())
        for route in own:
            native = isinstance(route, Mount) or (isinstance(route, Route) and "HEAD" in (route.methods or ()))
            if native and route.matches(scope)[0] is Match.FULL:
                return True
        return any(route.matches(scope)[0] is not Match.NONE for route in self.no_head)

    async def _head(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The scope itself, not a copy: the router records the matched route in it, which the
        # access log and the metrics read. Every layer outside sees HEAD again from the
        # response start on (the server drops a HEAD response's body by the method too).
        scope["method"] = "GET"

        async def head_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                scope["method"] = "HEAD"
            elif message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(scope, receive, head_send)
        finally:
            scope["method"] = "HEAD"


class MethodNotAllowed:
    """The 405 problem, with `Allow` listing what every route matching the path accepts.

    `routes`: the API's routes (FastAPI keeps included routers as opaque entries of the
    app's table); the app's own routes (`/openapi.json`) are read from the app.
    """

    def __init__(self, routes: Sequence[BaseRoute], no_head: Sequence[BaseRoute] = ()) -> None:
        self.routes = tuple(routes)
        self.no_head = tuple(no_head)

    async def __call__(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        allowed: set[str] = set()
        for route in (*self.routes, *request.app.router.routes):
            methods = getattr(route, "methods", None)
            if methods and route.matches(request.scope)[0] is not Match.NONE:
                allowed |= methods
                if "GET" in methods and route not in self.no_head:
                    allowed.add("HEAD")  # HeadAsGet
        headers = dict(exc.headers or {})
        if allowed:
            headers["Allow"] = ", ".join(sorted(allowed, key=lambda m: (_ORDER.get(m, len(_ORDER)), m)))
        detail = exc.detail if isinstance(exc.detail, str) else None
        return ProblemResponse(request, 405, detail=detail, headers=headers)
