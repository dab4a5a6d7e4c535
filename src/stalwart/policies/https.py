"""HTTPS only: redirect or refuse plain-HTTP requests (on in production).

The scheme is `scope["scheme"]` as resolved by the proxies middleware, so
`X-Forwarded-Proto`/`Forwarded` count only from trusted proxies.

* GET/HEAD over HTTP: `308 Permanent Redirect` to the same path and query on https.
* Any other method over HTTP: `403` problem+json of type `/problems/https-required`,
  not a redirect. The request (body, credentials) has already crossed the network in
  clear; a 308 would make the client send it a second time and hide the mistake, while
  a refusal makes the misconfigured client visible at once. 403 rather than 400: the
  request is well-formed, the server refuses to act on it over this transport.
* Health probes (`/health`, `/health/live` by default) pass on HTTP, so a load
  balancer can probe the instance directly.
* WebSocket over `ws`: closed with code 1008 (policy violation) before accepting.

The redirect keeps the request's `Host` (validated: a malformed Host gets a 400
problem); the port is dropped, or replaced by `https_port` when it is not 443.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Collection

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from stalwart.policies.problem import problem_type, send_problem
from stalwart.settings import Settings

__all__ = ["DEFAULT_EXEMPT_PATHS", "HTTPSRedirectMiddleware", "https_redirect_middleware"]

DEFAULT_EXEMPT_PATHS: tuple[str, ...] = ("/health", "/health/live")

# host or [ipv6] with an optional port; nothing that could change the URL's authority.
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
_REDIRECT_METHODS = frozenset({"GET", "HEAD"})


class HTTPSRedirectMiddleware:
    """Send plain-HTTP traffic to HTTPS; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        exempt_paths: Collection[str] = DEFAULT_EXEMPT_PATHS,
        https_port: int = 443,
    ) -> None:
        self.app = app
        self.exempt_paths = frozenset(exempt_paths)
        self._port_suffix = b"" if https_port == 443 else b":%d" % https_port

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the inner app's awaitable: one coroutine frame less per
        # request than `async def` (see policies/exchange.py on the per-layer costs).
        kind = scope["type"]
        if kind == "http" and scope["scheme"] == "http" and scope["path"] not in self.exempt_paths:
            return self._refuse_http(scope, send)
        if kind == "websocket" and scope["scheme"] == "ws":
            return send({"type": "websocket.close", "code": 1008, "reason": "HTTPS required"})
        return self.app(scope, receive, send)

    async def _refuse_http(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in _REDIRECT_METHODS:
            await send_problem(
                scope,
                send,
                403,
                title="HTTPS required",
                detail="This service accepts requests over HTTPS only; repeat it with https://.",
                type_=problem_type("https-required"),
            )
            return
        host = Headers(scope=scope).get("host", "")
        if not _HOST.match(host):
            await send_problem(
                scope, send, 400, title="Bad Host header", detail="The Host header is invalid."
            )
            return
        # Drop the port: the HTTP listener's port means nothing for HTTPS.
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") and ":" in host else host
        path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        location = b"https://" + hostname.encode("ascii") + self._port_suffix + path
        if scope.get("query_string"):
            location += b"?" + scope["query_string"]
        await send(
            {
                "type": "http.response.start",
                "status": 308,
                "headers": [(b"location", location), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def https_redirect_middleware(settings: Settings) -> Middleware | None:
    """HTTPSRedirectMiddleware when `settings.effective_https_redirect` (production), else None."""
    if not settings.effective_https_redirect:
        return None
    return Middleware(HTTPSRedirectMiddleware)
