"""Client address and scheme, believed from proxy headers only when the peer is a trusted proxy.

This replaces uvicorn's `proxy_headers` (which trusts 127.0.0.1 by default), so the
trusted-proxy list in settings is the only source of truth. After this middleware,
`scope["client"]` is the resolved client `(ip, port)` and `scope["scheme"]` the scheme the
client used; everything downstream (rate limiting, logs, HTTPS redirect) reads only those.

Rules:

* The peer (`scope["client"][0]`) is trusted when it lies in one of `trusted_proxies`.
  With an untrusted peer, the headers are ignored: a spoofed `X-Forwarded-For` changes
  nothing.
* Exactly one header family is read, the one the proxy in front writes
  (`header="x-forwarded"`: `X-Forwarded-For` + `X-Forwarded-Proto`; `header="forwarded"`:
  RFC 7239 `Forwarded`). Reading both would let a client smuggle the family the proxy
  passes through untouched.
* The client is the RIGHT-MOST hop that is not itself trusted: each proxy appends the
  address it saw, so everything left of the first untrusted hop is client-supplied.
  When every hop is trusted, the left-most hop is the client (an internal caller).
* The scheme comes from the same hop as the address: the `proto=` of that `Forwarded`
  element, or the `X-Forwarded-Proto` entry at the same index when both lists have the
  same length (otherwise its right-most entry, written by the nearest proxy).
* A malformed value (not an IP address, `unknown`, an obfuscated `_name`) at the hop that
  would be the client makes the middleware keep the peer address: a bad header never
  invents a client. Unknown schemes are ignored likewise.
* IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are folded to IPv4, for the peer too,
  so one client has one address whichever socket family it arrived on.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Literal

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from stalwart.settings import Settings

__all__ = [
    "ProxyHeadersMiddleware",
    "normalize_ip",
    "parse_forwarded",
    "parse_host_port",
    "proxy_headers_middleware",
]

Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address

_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WS = {"http": "ws", "https": "wss"}


def _address(value: str) -> Address | None:
    try:
        address = ip_address(value)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize_ip(value: str) -> str | None:
    """The canonical text of an IP address (IPv4-mapped IPv6 folded to IPv4); None if not an IP."""
    address = _address(value)
    return None if address is None else str(address)


def parse_host_port(value: str) -> tuple[str, int] | None:
    """`1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80` to (canonical ip, port); else None."""
    value = value.strip()
    port = 0
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        if not port_text.isdigit():
            return None
        port = int(port_text)
    else:
        host = value
    if port > 65535:
        return None
    ip = normalize_ip(host)
    return None if ip is None else (ip, port)


# Hops and peers repeat (a handful of proxies, a steady set of clients) and parsing one costs
# microseconds (ipaddress): cache the results, which are immutable. The length bound keeps
# junk hops a client puts in X-Forwarded-For from filling the cache with long keys.
_CACHED_MAX_LEN = 64
_HOPS_MEMO_SIZE = 4096
_parse_host_port_cached = functools.lru_cache(maxsize=4096)(parse_host_port)
_normalize_ip_cached = functools.lru_cache(maxsize=1024)(normalize_ip)


def _parse_hop(value: str) -> tuple[str, int] | None:
    if len(value) <= _CACHED_MAX_LEN:
        return _parse_host_port_cached(value)
    return parse_host_port(value)


def _split_quoted(value: str, sep: str) -> list[str]:
    """Split on `sep` outside double-quoted strings (RFC 7230 quoted-string, with \\-escapes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def parse_forwarded(value: str) -> list[dict[str, str]]:
    """RFC 7239 `Forwarded` to one dict per element (keys lowercased, quotes removed)."""
    elements: list[dict[str, str]] = []
    for element in _split_quoted(value, ","):
        pairs: dict[str, str] = {}
        for pair in _split_quoted(element, ";"):
            key, sep, val = pair.partition("=")
            if sep:
                val = val.strip()
                if len(val) >= 2 and val[0] == val[-1] == '"':
                    val = val[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                pairs[key.strip().lower()] = val
        elements.append(pairs)
    return elements


class ProxyHeadersMiddleware:
    """Resolve `scope["client"]` and `scope["scheme"]` behind trusted proxies; see module docs."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_proxies: Iterable[str | Network] = (),
        header: Literal["x-forwarded", "forwarded"] = "x-forwarded",
    ) -> None:
        self.app = app
        self.networks: tuple[Network, ...] = tuple(
            net if isinstance(net, IPv4Network | IPv6Network) else ip_network(net, strict=False)
            for net in trusted_proxies
        )
        self.header = header
        # Peers repeat (a handful of proxies, a steady set of clients): cache the verdicts.
        self._trusted = functools.lru_cache(maxsize=4096)(self._compute_trusted)
        self._hops: dict[
            tuple[bytes | None, bytes | None], tuple[tuple[str, int] | None, str | None]
        ] = {}

    def _compute_trusted(self, ip: str) -> bool:
        address = _address(ip)
        return address is not None and any(address in net for net in self.networks)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the inner app's awaitable: one coroutine frame less per
        # request than `async def` (see policies/exchange.py on the per-layer costs).
        if scope["type"] in ("http", "websocket"):
            self._resolve(scope)
        return self.app(scope, receive, send)

    def _resolve(self, scope: Scope) -> None:
        client = scope.get("client")
        if not client:
            return
        peer = client[0]
        if ":" in peer and peer[:7].lower() == "::ffff:":
            folded = _normalize_ip_cached(peer) if len(peer) <= _CACHED_MAX_LEN else normalize_ip(peer)
            if folded is not None:
                peer = folded
                scope["client"] = (peer, client[1])
        if not self.networks or len(peer) > 64 or not self._trusted(peer):
            return
        hops = self._forwarded_hops(scope) if self.header == "forwarded" else self._x_forwarded_hops(scope)
        if hops is None:
            return
        address, scheme = hops
        if address is not None:
            scope["client"] = address
        if scheme is not None:
            scope["scheme"] = _WS[scheme] if scope["type"] == "websocket" else scheme

    def _pick(self, hosts: list[str]) -> tuple[int, tuple[str, int] | None]:
        """Index of the client hop and its parsed address (None when malformed)."""
        for index in range(len(hosts) - 1, -1, -1):
            parsed = _parse_hop(hosts[index])
            if parsed is None or not self._trusted(parsed[0]):
                return index, parsed
        return 0, _parse_hop(hosts[0])

    def _x_forwarded_hops(self, scope: Scope) -> tuple[tuple[str, int] | None, str | None] | None:
        xff: bytes | None = None
        xfp: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                xff = value if xff is None else xff + b"," + value
            elif name == b"x-forwarded-proto":
                xfp = value if xfp is None else xfp + b"," + value
        # Behind a proxy the same few header values repeat request after request: remember
        # the answer per (X-Forwarded-For, X-Forwarded-Proto), bounded in entries and length
        # so client-chosen values cannot grow it.
        key = (xff, xfp)
        cached = self._hops.get(key)
        if cached is not None:
            return cached
        hops = self._parse_x_forwarded(xff, xfp)
        if len(xff or b"") + len(xfp or b"") <= _CACHED_MAX_LEN * 4:
            if len(self._hops) >= _HOPS_MEMO_SIZE:
                self._hops.clear()
            self._hops[key] = hops
        return hops

    def _parse_x_forwarded(
        self, xff: bytes | None, xfp: bytes | None
    ) -> tuple[tuple[str, int] | None, str | None]:
        address = None
        index = count = 0
        if xff is not None:
            hosts = xff.decode("latin-1").split(",")
            index, address = self._pick(hosts)
            count = len(hosts)
        scheme = None
        if xfp is not None:
            protos = [p.strip().lower() for p in xfp.decode("latin-1").split(",")]
            proto = protos[index] if len(protos) == count else protos[-1]
            scheme = _SCHEMES.get(proto)
        return address, scheme

    def _forwarded_hops(self, scope: Scope) -> tuple[tuple[str, int] | None, str | None] | None:
        values = [value for name, value in scope["headers"] if name == b"forwarded"]
        if not values:
            return None
        elements = parse_forwarded(b",".join(values).decode("latin-1"))
        with_for = [element for element in elements if "for" in element]
        if not with_for:
            return None
        index, address = self._pick([element["for"] for element in with_for])
        proto = with_for[index].get("proto")
        scheme = _SCHEMES.get(proto.lower()) if proto is not None else None
        return address, scheme


def proxy_headers_middleware(settings: Settings) -> Middleware:
    """ProxyHeadersMiddleware configured from `settings` (slot 1 of the policy stack)."""
    return Middleware(
        ProxyHeadersMiddleware,
        trusted_proxies=settings.trusted_proxies,
        header=settings.proxy_headers,
    )
