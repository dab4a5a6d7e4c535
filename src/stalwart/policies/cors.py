"""CORS for the configured origins only: Starlette's CORSMiddleware, with its gaps closed.

Starlette 1.10's CORSMiddleware, read and tested (tests/policies/test_cors.py), does most
of the policy: exact-origin matching, `allow_origin_regex`, preflight answered by the
middleware itself (never passed to the app) with allowed methods, headers and
`Access-Control-Max-Age`, and `Vary: Origin` on simple responses. Where it falls short,
`StrictCORSMiddleware` subclasses it:

* `*` with credentials makes Starlette reflect ANY origin with
  `Access-Control-Allow-Credentials: true`: refused in `__init__` (and so at start-up by
  `cors_middleware`) with `CORSConfigurationError`.
* A disallowed origin on a simple request still got `Access-Control-Allow-Credentials`
  and `Access-Control-Expose-Headers`: it now gets no `Access-Control-*` header at all.
* A preflight from a disallowed origin got a text/plain 400 carrying the allowed methods,
  headers and credentials flag: it now gets a 400 problem+json
  (`/problems/cors-preflight-rejected`) with no `Access-Control-*` header. A preflight from
  an allowed origin asking for a method or header not allowed keeps Starlette's headers
  (so the browser reports the precise reason) in a 400 problem.
* `Vary: Origin` is added once, never duplicated, on every response (also without an
  `Origin` header), since the answer depends on it and a shared cache must not mix them.

Development and test (`settings.env`) also allow `http://localhost:<port>` and
`http://127.0.0.1:<port>`.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stalwart.policies.problem import problem_type, send_problem
from stalwart.settings import Settings

__all__ = [
    "DEV_ORIGIN_REGEX",
    "CORSConfigurationError",
    "StrictCORSMiddleware",
    "cors_middleware",
]

DEV_ORIGIN_REGEX = r"http://(?:localhost|127\.0\.0\.1)(?::[0-9]{1,5})?"

_PREFLIGHT_VARY = (
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers, "
    "Access-Control-Request-Private-Network"
)


class CORSConfigurationError(ValueError):
    """The CORS configuration is unsafe; raised at start-up."""


def _add_vary_origin(headers: MutableHeaders) -> None:
    values = headers.getlist("vary")
    tokens = {token.strip().lower() for value in values for token in value.split(",")}
    if "origin" not in tokens and "*" not in tokens:
        headers["Vary"] = ", ".join([*values, "Origin"])


class StrictCORSMiddleware(CORSMiddleware):
    """Starlette's CORSMiddleware without its permissive corners; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        allow_origins: Collection[str] = (),
        allow_methods: Collection[str] = ("GET",),
        allow_headers: Collection[str] = (),
        allow_credentials: bool = False,
        allow_origin_regex: str | None = None,
        allow_private_network: bool = False,
        expose_headers: Collection[str] = (),
        max_age: int = 600,
    ) -> None:
        if allow_credentials and "*" in allow_origins:
            raise CORSConfigurationError(
                "CORS: allow_origins contains '*' while credentials are allowed; Starlette "
                "would then reflect every origin with Access-Control-Allow-Credentials: true. "
                "List the exact origins (STALWART_CORS_ORIGINS) or turn credentials off "
                "(STALWART_CORS_ALLOW_CREDENTIALS=false)."
            )
        super().__init__(
            app,
            allow_origins=allow_origins,
            allow_methods=allow_methods,
            allow_headers=allow_headers,
            allow_credentials=allow_credentials,
            allow_origin_regex=allow_origin_regex,
            allow_private_network=allow_private_network,
            expose_headers=expose_headers,
            max_age=max_age,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if (
            origin is not None
            and scope["method"] == "OPTIONS"
            and "access-control-request-method" in headers
        ):
            await self._preflight(scope, receive, send, headers, origin)
            return
        await self.simple_response(scope, receive, send, request_headers=headers)

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, origin: str
    ) -> None:
        response = self.preflight_response(request_headers=headers)
        if response.status_code == 200:
            await response(scope, receive, send)
            return
        reason = bytes(response.body).decode("latin-1")
        if self.is_allowed_origin(origin):
            cors = [
                (name, value)
                for name, value in response.raw_headers
                if name.startswith(b"access-control-") or name == b"vary"
            ]
        else:
            cors = [(b"vary", _PREFLIGHT_VARY.encode("latin-1"))]
        await send_problem(
            scope,
            send,
            400,
            title="CORS preflight rejected",
            detail=f"{reason}.",
            type_=problem_type("cors-preflight-rejected"),
            headers=cors,
        )

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        if message["type"] != "http.response.start":
            await send(message)
            return
        message.setdefault("headers", [])
        headers = MutableHeaders(scope=message)
        origin = request_headers.get("origin")
        if origin is not None and self.is_allowed_origin(origin):
            headers.update(self.simple_headers)
            if not self.allow_all_origins or self.allow_credentials:
                headers["Access-Control-Allow-Origin"] = origin
        _add_vary_origin(headers)
        await send(message)


def cors_middleware(settings: Settings) -> Middleware:
    """StrictCORSMiddleware configured from `settings` (slot 8 of the policy stack).

    Validates here too: Starlette builds its middleware at the first request (or lifespan),
    so this makes an unsafe configuration fail in `create_app` already.
    """
    regex = None if settings.is_production else DEV_ORIGIN_REGEX
    if settings.cors_allow_credentials and "*" in settings.cors_origins:
        raise CORSConfigurationError(
            "STALWART_CORS_ORIGINS contains '*' while STALWART_CORS_ALLOW_CREDENTIALS is on: "
            "Starlette would reflect every origin with credentials. List the exact origins."
        )
    return Middleware(
        StrictCORSMiddleware,
        allow_origins=tuple(settings.cors_origins),
        allow_origin_regex=regex,
        allow_credentials=settings.cors_allow_credentials,
        allow_methods=tuple(settings.cors_allow_methods),
        allow_headers=tuple(settings.cors_allow_headers),
        expose_headers=tuple(settings.cors_expose_headers),
        max_age=settings.cors_max_age,
    )
