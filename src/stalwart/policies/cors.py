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

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from stalwart.policies.exchange import Exchange, RawHeaders, watch
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
    b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers, "
    b"Access-Control-Request-Private-Network"
)


class CORSConfigurationError(ValueError):
    """The CORS configuration is unsafe; raised at start-up."""


_ORIGIN = b"Origin"


def _set_header(headers: RawHeaders, name: bytes, value: bytes) -> None:
    """`MutableHeaders.__setitem__` on the raw list: replace the first, drop the others."""
    found = [index for index, (key, _) in enumerate(headers) if key == name]
    if not found:
        headers.append((name, value))
        return
    for index in reversed(found[1:]):
        del headers[index]
    headers[found[0]] = (name, value)


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
        # Starlette's simple_headers as raw byte pairs, built once instead of per response.
        self._simple_raw: tuple[tuple[bytes, bytes], ...] = tuple(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in self.simple_headers.items()
        )
        self._explicit_origin = not self.allow_all_origins or self.allow_credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A scan of the raw list (as Starlette's gzip does) instead of building Headers:
        # most requests (same-origin, server-to-server) carry no Origin at all.
        raw_origin: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"origin":
                raw_origin = value
                break
        exchange, send = watch(scope, send)
        if raw_origin is None:
            exchange.vary.append(_ORIGIN)
            await self.app(scope, receive, send)
            return
        origin = raw_origin.decode("latin-1")
        if scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "access-control-request-method" in headers:
                await self._preflight(scope, receive, send, headers, origin)
                return
        exchange.vary.append(_ORIGIN)
        if not self.is_allowed_origin(origin):
            await self.app(scope, receive, send)
            return
        cors = self._simple_raw
        if self._explicit_origin:
            cors = (*cors, (b"access-control-allow-origin", raw_origin))

        def set_cors_headers(exchange: Exchange, headers: RawHeaders) -> None:
            for name, value in cors:
                _set_header(headers, name, value)

        exchange.hooks.append(set_cors_headers)
        await self.app(scope, receive, send)

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
            cors = [(b"vary", _PREFLIGHT_VARY)]
        await send_problem(
            scope,
            send,
            400,
            title="CORS preflight rejected",
            detail=f"{reason}.",
            type_=problem_type("cors-preflight-rejected"),
            headers=cors,
        )


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
