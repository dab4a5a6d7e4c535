"""ProxyHeadersMiddleware: client address and scheme from trusted proxies only."""

from __future__ import annotations

from typing import Any, Literal

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from stalwart.policies.proxies import (
    ProxyHeadersMiddleware,
    parse_forwarded,
    parse_host_port,
    proxy_headers_middleware,
)
from stalwart.settings import Settings

pytestmark = pytest.mark.anyio

TRUSTED = ["10.0.0.0/8", "2001:db8:ffff::/48"]


async def resolve(
    headers: list[tuple[str, str]],
    peer: str | None = "10.0.0.1",
    *,
    trusted: list[str] | None = None,
    header: Literal["x-forwarded", "forwarded"] = "x-forwarded",
    kind: str = "http",
    scheme: str = "http",
) -> tuple[Any, str]:
    """Run one scope through the middleware; the (client, scheme) the app sees."""
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(client=scope["client"], scheme=scope["scheme"])

    middleware = ProxyHeadersMiddleware(
        app, trusted_proxies=TRUSTED if trusted is None else trusted, header=header
    )
    scope: dict[str, Any] = {
        "type": kind,
        "scheme": scheme,
        "path": "/",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": (peer, 5000) if peer is not None else None,
    }

    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        pass

    await middleware(scope, receive, send)
    return seen["client"], seen["scheme"]


async def test_untrusted_peer_spoofing_x_forwarded_for_changes_nothing() -> None:
    headers = [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https")]
    assert await resolve(headers, peer="198.51.100.7") == (("198.51.100.7", 5000), "http")


async def test_no_trusted_proxies_by_default_changes_nothing() -> None:
    headers = [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https")]
    assert await resolve(headers, peer="127.0.0.1", trusted=[]) == (("127.0.0.1", 5000), "http")


async def test_trusted_peer_gives_client_and_scheme() -> None:
    headers = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")]
    assert await resolve(headers) == (("203.0.113.9", 0), "https")


async def test_right_most_untrusted_hop_is_the_client() -> None:
    # The client prepended a spoof; the trusted proxies appended the real hops.
    headers = [("X-Forwarded-For", "6.6.6.6, 203.0.113.9, 10.0.0.7")]
    assert (await resolve(headers))[0] == ("203.0.113.9", 0)


async def test_repeated_x_forwarded_for_lines_are_one_list() -> None:
    headers = [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.9, 10.0.0.7")]
    assert (await resolve(headers))[0] == ("203.0.113.9", 0)


async def test_all_hops_trusted_gives_the_left_most() -> None:
    headers = [("X-Forwarded-For", "10.9.9.9, 10.0.0.7")]
    assert (await resolve(headers))[0] == ("10.9.9.9", 0)


async def test_hop_with_port() -> None:
    assert (await resolve([("X-Forwarded-For", "203.0.113.9:4711")]))[0] == ("203.0.113.9", 4711)
    v6 = await resolve([("X-Forwarded-For", "[2001:db8::1]:443")])
    assert v6[0] == ("2001:db8::1", 443)
    bare_v6 = await resolve([("X-Forwarded-For", "2001:DB8:0::1")])
    assert bare_v6[0] == ("2001:db8::1", 0)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "unknown",
        "_hidden",
        "1.2.3.4:abc",
        "1.2.3.4:99999",
        "[::1",
        "1.2.3.4.5",
        "6.6.6.6, nonsense",
        " , ",
    ],
)
async def test_malformed_client_hop_keeps_the_peer(value: str) -> None:
    assert (await resolve([("X-Forwarded-For", value)]))[0] == ("10.0.0.1", 5000)


async def test_ipv4_mapped_addresses_are_folded() -> None:
    headers = [("X-Forwarded-For", "::ffff:203.0.113.9")]
    assert (await resolve(headers))[0] == ("203.0.113.9", 0)
    # The peer itself, even with no proxy configured...
    assert (await resolve([], peer="::ffff:198.51.100.7", trusted=[]))[0] == ("198.51.100.7", 5000)
    # ... and before the trust check: a mapped proxy address matches its IPv4 network.
    assert (await resolve(headers, peer="::FFFF:10.0.0.1"))[0] == ("203.0.113.9", 0)


async def test_ipv6_trusted_network() -> None:
    headers = [("X-Forwarded-For", "2001:db8::5, 2001:db8:ffff::1")]
    assert (await resolve(headers, peer="2001:db8:ffff::2"))[0] == ("2001:db8::5", 0)


async def test_scheme_only_from_known_values() -> None:
    assert (await resolve([("X-Forwarded-Proto", "ftp")]))[1] == "http"
    assert (await resolve([("X-Forwarded-Proto", " HTTPS ")]))[1] == "https"
    assert (await resolve([("X-Forwarded-Proto", "https")], scheme="https"))[1] == "https"
    assert (await resolve([("X-Forwarded-Proto", "http")], scheme="https"))[1] == "http"


async def test_scheme_of_the_client_hop_when_lists_align() -> None:
    # Client spoofed "https"; the trusted proxy appended the truth for its hop.
    headers = [
        ("X-Forwarded-For", "6.6.6.6, 203.0.113.9"),
        ("X-Forwarded-Proto", "https, http"),
    ]
    assert await resolve(headers) == (("203.0.113.9", 0), "http")
    cdn = [
        ("X-Forwarded-For", "203.0.113.9, 10.0.0.7"),
        ("X-Forwarded-Proto", "https, http"),
    ]
    assert await resolve(cdn) == (("203.0.113.9", 0), "https")


async def test_scheme_right_most_when_lists_differ() -> None:
    headers = [("X-Forwarded-For", "6.6.6.6, 203.0.113.9"), ("X-Forwarded-Proto", "https")]
    assert (await resolve(headers))[1] == "https"


async def test_websocket_scheme_is_ws_or_wss() -> None:
    secure = await resolve([("X-Forwarded-Proto", "https")], kind="websocket", scheme="ws")
    assert secure[1] == "wss"
    plain = await resolve([("X-Forwarded-Proto", "http")], kind="websocket", scheme="wss")
    assert plain[1] == "ws"


async def test_forwarded_header() -> None:
    headers = [
        (
            "Forwarded",
            'for=6.6.6.6;proto=https, for="[2001:db8::7]:4711";proto=https, '
            "for=10.0.0.9;proto=http;by=10.0.0.1",
        )
    ]
    assert await resolve(headers, header="forwarded") == (("2001:db8::7", 4711), "https")


async def test_forwarded_client_hop_proto_not_the_spoofed_one() -> None:
    headers = [
        ("Forwarded", "for=6.6.6.6;proto=https"),
        ("Forwarded", "for=203.0.113.9;proto=http"),
    ]
    assert await resolve(headers, header="forwarded") == (("203.0.113.9", 0), "http")


@pytest.mark.parametrize(
    "value",
    [
        "for=unknown",
        'for="_hidden"',
        "for",
        "proto=https",
        "for=;",
        '"',
        'for="1.2.3.4',
        'for=1.2.3.4"',
    ],
)
async def test_forwarded_malformed_keeps_the_peer(value: str) -> None:
    client, _ = await resolve([("Forwarded", value)], header="forwarded")
    assert client == ("10.0.0.1", 5000)


async def test_only_the_configured_header_family_is_read() -> None:
    xff = [("X-Forwarded-For", "203.0.113.9"), ("X-Forwarded-Proto", "https")]
    assert await resolve(xff, header="forwarded") == (("10.0.0.1", 5000), "http")
    fwd = [("Forwarded", "for=203.0.113.9;proto=https")]
    assert await resolve(fwd, header="x-forwarded") == (("10.0.0.1", 5000), "http")


async def test_no_client_in_scope_is_left_alone() -> None:
    assert await resolve([("X-Forwarded-For", "1.2.3.4")], peer=None) == (None, "http")


def test_parse_forwarded() -> None:
    assert parse_forwarded('For="[2001:db8::1]:80";Proto=https;by=x, for=1.2.3.4') == [
        {"for": "[2001:db8::1]:80", "proto": "https", "by": "x"},
        {"for": "1.2.3.4"},
    ]
    assert parse_forwarded('for="a,b;c=d"') == [{"for": "a,b;c=d"}]


def test_parse_host_port() -> None:
    assert parse_host_port("1.2.3.4") == ("1.2.3.4", 0)
    assert parse_host_port("[::ffff:1.2.3.4]:8") == ("1.2.3.4", 8)
    assert parse_host_port("::1") == ("::1", 0)
    assert parse_host_port("host.example:80") is None
    assert parse_host_port("[::1]x") is None


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.text(alphabet=st.characters(max_codepoint=255), max_size=60), max_size=4),
    family=st.sampled_from(["x-forwarded-for", "forwarded", "x-forwarded-proto"]),
)
def test_arbitrary_header_values_never_raise(values: list[str], family: str) -> None:
    async def run() -> None:
        for header in ("x-forwarded", "forwarded"):
            client, scheme = await resolve(
                [(family, value) for value in values],
                header=header,
            )
            assert scheme in ("http", "https")
            assert client[0] == "10.0.0.1" or parse_host_port(client[0]) is not None

    anyio.run(run)


async def test_through_a_real_app_and_settings() -> None:
    async def whoami(request: Request) -> Response:
        assert request.client is not None
        return JSONResponse({"ip": request.client.host, "scheme": request.url.scheme})

    config = Settings(_env_file=None, trusted_proxies="10.0.0.0/8,192.168.0.0/16")
    app = Starlette(routes=[Route("/", whoami)], middleware=[proxy_headers_middleware(config)])
    headers = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    for peer, expected in [
        ("192.168.1.1", {"ip": "203.0.113.9", "scheme": "https"}),
        ("203.0.113.50", {"ip": "203.0.113.50", "scheme": "http"}),
    ]:
        transport = httpx.ASGITransport(app=app, client=(peer, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/", headers=headers)).json() == expected


def test_middleware_factory_uses_settings() -> None:
    config = Settings(_env_file=None, trusted_proxies="10.0.0.0/8", proxy_headers="forwarded")
    middleware = proxy_headers_middleware(config)
    factory: object = middleware.cls
    assert factory is ProxyHeadersMiddleware
    assert middleware.kwargs == {"trusted_proxies": config.trusted_proxies, "header": "forwarded"}


@pytest.mark.parametrize(
    "hop",
    [
        "203.0.113.9",
        "[::ffff:203.0.113.9]:8080",
        # Longer than the parse cache's key bound: parsed uncached, same answer.
        "[fe80::1%" + "z" * 60 + "]:443",
    ],
)
async def test_cached_hop_parsing_gives_the_same_client_every_time(hop: str) -> None:
    expected = parse_host_port(hop)
    assert expected is not None
    for _ in range(3):
        assert (await resolve([("X-Forwarded-For", hop)]))[0] == expected


async def test_ipv4_mapped_peer_is_folded_on_every_request() -> None:
    for _ in range(3):
        assert await resolve([], peer="::ffff:198.51.100.7", trusted=[]) == (
            ("198.51.100.7", 5000),
            "http",
        )
