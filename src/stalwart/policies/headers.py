"""Security headers on every HTTP response: helmet 8's defaults, then stricter for an API.

Every response (errors, 404s, static files, docs) gets helmet 8's default header set.
On top of it:

* JSON responses (`application/json`, `application/*+json`) and responses without a body
  type get `Content-Security-Policy: default-src 'none'; frame-ancestors 'none'` and
  `X-Frame-Options: DENY`: a JSON document never needs to load anything or be framed.
  Every other response (HTML pages, static assets) keeps helmet's document policy, whose
  `script-src 'self'` allows no inline script.
* `Permissions-Policy` denying powerful features, when configured.
* `Cache-Control: no-store` on authenticated responses (`scope["state"]["authenticated"]`
  is True once the app has run) that did not choose their own caching.
* `Server` and `X-Powered-By` are removed whoever set them.

A header the app set itself wins over the default, as with helmet (whose headers are set
before the route runs): a docs page can send its own nonce-based CSP.

`Strict-Transport-Security` goes on HTTPS responses; on plain HTTP only when
`hsts_over_http` is on (development, for helmet parity). Browsers ignore it over HTTP, but
in production an HTTP response carrying it means TLS is not where it should be.

All header tuples are built once in `__init__`; per request the middleware only picks one
of four prepared lists, in a hook on the request's shared response watcher
(policies/exchange.py) rather than a `send` wrapper of its own. With `prepared_fields` on
(`install_policies` turns it on when the policy stack is the app's outermost middleware) and
under a server that takes prepared fields (`stalwart serve`), a response that sets none of
them gets the set as one block rendered at start-up, which the server does not check field
by field again. Off by default: a layer outside this one could no longer see or change the
fields.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from stalwart.policies.exchange import Exchange, RawHeaders, render_fields, watch
from stalwart.settings import Settings

__all__ = [
    "HELMET_CSP",
    "HELMET_HEADERS",
    "JSON_CSP",
    "SecurityHeadersMiddleware",
    "error_document_fields",
    "hsts_value",
    "parse_header_overrides",
    "security_headers_middleware",
]

# helmet 8.x `contentSecurityPolicy.getDefaultDirectives()`, serialized as helmet does.
HELMET_CSP = (
    "default-src 'self';base-uri 'self';font-src 'self' https: data:;"
    "form-action 'self';frame-ancestors 'self';img-src 'self' data:;object-src 'none';"
    "script-src 'self';script-src-attr 'none';style-src 'self' https: 'unsafe-inline';"
    "upgrade-insecure-requests"
)
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"

# helmet 8 defaults other than CSP and HSTS, in helmet's order.
HELMET_HEADERS: tuple[tuple[str, str], ...] = (
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Origin-Agent-Cluster", "?1"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-DNS-Prefetch-Control", "off"),
    ("X-Download-Options", "noopen"),
    ("X-Permitted-Cross-Domain-Policies", "none"),
    ("X-XSS-Protection", "0"),
)

_CSP = "content-security-policy"
_XFO = "x-frame-options"
_HSTS = "strict-transport-security"
_STRIPPED = frozenset({b"server", b"x-powered-by"})
_CONTENT_TYPE = b"content-type"
_CACHE_CONTROL = b"cache-control"
_NO_STORE = (b"cache-control", b"no-store")
_MEMO_SIZE = 256
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


_Prepared = tuple[tuple[tuple[bytes, bytes], ...], frozenset[bytes], bytes | None]


def hsts_value(max_age: int, include_subdomains: bool = True, preload: bool = False) -> str:
    value = f"max-age={max_age}"
    if include_subdomains:
        value += "; includeSubDomains"
    if preload:
        value += "; preload"
    return value


def parse_header_overrides(items: Iterable[str]) -> dict[str, str | None]:
    """`["Name: value", "Other:"]` to `{"name": "value", "other": None}` (None: remove).

    Raises ValueError on a malformed entry, so a typo fails at start-up, not silently.
    """
    overrides: dict[str, str | None] = {}
    for item in items:
        name, sep, value = item.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not _TOKEN.match(name):
            raise ValueError(f"security header override {item!r} is not 'Name: value' or 'Name:'")
        if any(ch in value for ch in "\r\n\x00"):
            raise ValueError(f"security header override {name!r} has a control character")
        overrides[name.lower()] = value or None
    return overrides


def _encode(headers: Iterable[tuple[str, str]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
    )


def _is_json(content_type: bytes) -> bool:
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


class SecurityHeadersMiddleware:
    """Add the security header set to every HTTP response; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        csp: str | None = HELMET_CSP,
        json_csp: str | None = JSON_CSP,
        frame_options: str | None = "SAMEORIGIN",
        json_frame_options: str | None = "DENY",
        hsts: str | None = hsts_value(31_536_000),
        hsts_over_http: bool = True,
        permissions_policy: str | None = None,
        no_store_authenticated: bool = True,
        overrides: Mapping[str, str | None] | Sequence[str] = (),
        prepared_fields: bool | Callable[[], bool] = False,
    ) -> None:
        self.app = app
        # A callable is asked here, once: Starlette builds the middleware when it starts, when
        # the list of layers outside this one is final.
        use_block = prepared_fields() if callable(prepared_fields) else prepared_fields
        if not isinstance(overrides, Mapping):
            overrides = parse_header_overrides(overrides)
        overrides = {name.lower(): value for name, value in overrides.items()}

        common: dict[str, str | None] = {name.lower(): value for name, value in HELMET_HEADERS}
        if permissions_policy:
            common["permissions-policy"] = permissions_policy
        document = {_CSP: csp, _XFO: frame_options}
        data = {_CSP: json_csp, _XFO: json_frame_options}

        def build(
            variant: dict[str, str | None], with_hsts: bool
        ) -> tuple[tuple[bytes, bytes], ...]:
            headers = {**variant, **common}
            if with_hsts:
                headers[_HSTS] = hsts
            for name, value in overrides.items():
                # An override of HSTS changes its value, never where it is sent.
                if name != _HSTS or with_hsts:
                    headers[name] = value
            return _encode((name, value) for name, value in headers.items() if value)

        # (is_json, is_https) -> (headers, their names, the same rendered as a block);
        # both lookups are booleans, so no per-request building. The names let a response
        # that sets none of them take the whole prepared set at once.
        self._sets: dict[tuple[bool, bool], _Prepared] = {}
        for is_json in (False, True):
            for is_https in (False, True):
                prepared = build(data if is_json else document, is_https or hsts_over_http)
                self._sets[is_json, is_https] = (
                    prepared,
                    frozenset(n for n, _ in prepared),
                    (render_fields(prepared) or None) if use_block else None,
                )
        self._no_store = no_store_authenticated
        # Raw Content-Type value -> is JSON: a handful of distinct values in practice.
        self._json_types: dict[bytes, bool] = {}

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the inner app's awaitable: one coroutine frame less per
        # request than `async def` (see policies/exchange.py on the per-layer costs).
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        exchange, send = watch(scope, send)
        exchange.hooks.append(self._on_start)
        return self.app(scope, receive, send)

    def _on_start(self, exchange: Exchange, headers: RawHeaders) -> None:
        # A plain loop: on 3.11 a comprehension costs a function call, which dominates for
        # the two or three headers a typical response carries.
        present: set[bytes] = set()
        content_type: bytes | None = None
        stripped = False
        for name, value in headers:
            lname = name.lower()
            if lname in _STRIPPED:
                stripped = True
                continue
            if lname == _CONTENT_TYPE:
                content_type = value
            present.add(lname)
        if stripped:
            headers[:] = [header for header in headers if header[0].lower() not in _STRIPPED]
        if exchange.block_names:
            present |= exchange.block_names  # another security layer's block, inside this one
        if content_type is None:
            is_json = True  # no body type: nothing to render, so the strict set
        else:
            cached = self._json_types.get(content_type)
            if cached is None:
                cached = _is_json(content_type)
                if len(self._json_types) >= _MEMO_SIZE:
                    self._json_types.clear()  # bounded, whatever values the app sends
                self._json_types[content_type] = cached
            is_json = cached
        scope = exchange.scope
        prepared, prepared_names, block = self._sets[is_json, scope.get("scheme") == "https"]
        if present.isdisjoint(prepared_names):
            if block is not None and exchange.prepared:
                exchange.block += block
                exchange.block_names = (
                    exchange.block_names | prepared_names if exchange.block_names else prepared_names
                )
            else:
                headers.extend(prepared)
        else:
            headers.extend(h for h in prepared if h[0] not in present)
        if self._no_store and _CACHE_CONTROL not in present:
            state: Any = scope.get("state")
            # `type(...) is dict` first: the usual case, and far cheaper than the ABC check.
            if (type(state) is dict or isinstance(state, Mapping)) and state.get(
                "authenticated"
            ) is True:
                headers.append(_NO_STORE)


def security_headers_middleware(
    settings: Settings, prepared_fields: bool | Callable[[], bool] = False
) -> Middleware:
    """SecurityHeadersMiddleware configured from `settings` (slot 4 of the policy stack)."""
    return Middleware(SecurityHeadersMiddleware, **_options(settings), prepared_fields=prepared_fields)


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "hsts": hsts_value(
            settings.hsts_max_age, settings.hsts_include_subdomains, settings.hsts_preload
        ),
        # Production: HSTS only over HTTPS. Elsewhere: helmet parity.
        "hsts_over_http": not settings.is_production,
        "permissions_policy": settings.permissions_policy or None,
        "overrides": parse_header_overrides(settings.security_headers),
    }


def error_document_fields(
    settings: Settings | None = None,
) -> tuple[tuple[tuple[bytes, bytes], ...], tuple[tuple[bytes, bytes], ...]]:
    """The fields this policy adds to an error document over HTTP and over HTTPS.

    For answers made outside the app, such as the server's own 400 (stalwart/protocol.py).
    Without `settings`: the layer's defaults, HSTS over HTTPS only.
    """
    if settings is None:
        layer = SecurityHeadersMiddleware(_no_app, hsts_over_http=False)
    else:
        layer = SecurityHeadersMiddleware(_no_app, **_options(settings))
    return layer._sets[True, False][0], layer._sets[True, True][0]


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no cover
    raise RuntimeError("a layer built for its fields only")
