"""OWASP API4 (unrestricted resource consumption): attempts to get a fresh rate-limit budget.

Spoofed client-address headers, path spellings, methods and query strings, IPv6 address
rotation inside one customer's /56: none of them escapes the per-IP budget, with the memory
and the Redis backend. Requests are sent as raw ASGI calls (`raw_request`), with the request
target exactly as a server receives it: HTTP clients would tidy the odd spellings away.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from tests.conftest import REDIS_URL, make_settings
from tests.security.helpers import PEER, audit_events, raw_request, running_app

pytestmark = [
    pytest.mark.anyio,
    # The budget does not depend on the database: SQLite only; both limiter backends.
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

LIMIT = 3
SPOOF_HEADERS = [
    "X-Forwarded-For", "X-Real-IP", "X-Client-IP", "True-Client-IP", "CF-Connecting-IP",
    "X-Originating-IP", "X-Cluster-Client-IP", "Client-IP", "Fastly-Client-IP", "X-Remote-Addr",
]


@pytest.fixture(params=["memory", "redis"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> dict[str, Any]:
    values: dict[str, Any] = {"database_url": database_url, "access_log": False}
    if request.param == "redis":
        prefix: str = request.getfixturevalue("redis_prefix")
        values.update(
            rate_limit_backend="redis",
            redis_url=REDIS_URL,
            rate_limit_key_prefix=prefix + "rl:",
            cache_key_prefix=prefix + "cache:",
            metrics_key_prefix=prefix + "metrics:",
            scheduler_lock_prefix=prefix + "lock:",
        )
    return values


@pytest.fixture
async def limited(tmp_path: Path, backend_settings: dict[str, Any]) -> AsyncIterator[FastAPI]:
    """3 requests per IP per window; 2 logins per IP; proxies in 10.0.0.0/8 trusted."""
    settings = make_settings(
        tmp_path,
        rate_limit=f"{LIMIT}/15minutes",
        rate_limit_login="2/15minutes",
        trusted_proxies="10.0.0.0/8",
        **backend_settings,
    )
    async with running_app(settings) as app:
        yield app


async def _status(app: FastAPI, target: str = "/api/v1/notes", method: str = "GET", **kw: Any) -> int:
    return (await raw_request(app, method, target, **kw)).status


async def _spend(app: FastAPI, client: tuple[str, int] = (PEER, 40000), **kw: Any) -> None:
    for _ in range(LIMIT):
        status = await _status(app, client=client, **kw)
        assert status == 401  # counted, then refused by the API for want of a token
    assert await _status(app, client=client, **kw) == 429


async def test_spoofed_address_headers_from_an_untrusted_peer_change_nothing(limited: FastAPI) -> None:
    statuses = []
    for i, name in enumerate(SPOOF_HEADERS):
        statuses.append(await _status(limited, headers=[(name, f"198.51.100.{i + 1}")]))
    statuses.append(await _status(limited, headers=[("Forwarded", "for=198.51.100.99;proto=https")]))
    statuses.append(await _status(limited, headers=[("X-Forwarded-For", "10.0.0.1")]))
    assert statuses == [401] * LIMIT + [429] * (len(statuses) - LIMIT)


async def test_a_trusted_proxy_forwards_the_real_client_and_spoofed_hops_are_ignored(
    limited: FastAPI,
) -> None:
    proxy = ("10.0.0.5", 50000)
    # The proxy appends the address it saw (198.51.100.7); the client made up the hops before it.
    statuses = [
        await _status(limited, client=proxy, headers=[("X-Forwarded-For", f"{spoof}, 198.51.100.7")])
        for spoof in ("1.1.1.1", "2.2.2.2", "10.0.0.1, 3.3.3.3", "4.4.4.4", "5.5.5.5")
    ]
    assert statuses == [401, 401, 401, 429, 429]
    # The other header family is not read at all behind an X-Forwarded-* proxy.
    assert await _status(limited, client=proxy, headers=[("Forwarded", "for=198.51.100.8")]) == 401
    # Another real client behind the same proxy has its own budget.
    assert await _status(limited, client=proxy, headers=[("X-Forwarded-For", "198.51.100.9")]) == 401


VARIANTS = [
    ("GET", "/api/v1/notes/"),
    ("GET", "/API/V1/NOTES"),
    ("GET", "/api/v1/Notes"),
    ("GET", "//api/v1/notes"),
    ("GET", "/api/v1//notes"),
    ("GET", "/api/v1/%6eotes"),
    ("GET", "/api/v1/notes%2F"),
    ("GET", "/api/v1/./notes"),
    ("GET", "/api/v1/x/../notes"),
    ("GET", "/api/v1/notes?limit=1"),
    ("GET", "/api/v1/notes?" + "x" * 2000),
    ("GET", "/api/v1/notes;jsessionid=1"),
    ("GET", "/api/v1/notes%20"),
    ("HEAD", "/api/v1/notes"),
    ("OPTIONS", "/api/v1/notes"),
    ("POST", "/api/v1/notes"),
    ("GET", "/api/v1/me"),
    ("GET", "/no/such/path"),
    ("GET", "/health/live/"),
    ("GET", "/HEALTH/LIVE"),
]


async def test_path_and_method_variants_share_the_per_ip_budget(limited: FastAPI) -> None:
    await _spend(limited)
    outcomes = {f"{method} {target}": await _status(limited, target, method) for method, target in VARIANTS}
    assert outcomes == {variant: 429 for variant in outcomes}


async def test_health_probes_stay_exempt_but_only_the_exact_paths(limited: FastAPI) -> None:
    await _spend(limited)
    assert await _status(limited, "/health/live") == 200
    assert await _status(limited, "/health/live?x=1") == 200
    assert await _status(limited, "/health/live/") == 429


async def test_login_path_variants_do_not_reach_the_handler_with_a_fresh_budget(limited: FastAPI) -> None:
    """The stricter login budget: every spelling either is limited or never reaches the handler."""
    email = f"victim-{uuid.uuid4().hex[:8]}@example.com"
    body = b'{"email": "%s", "password": "wrong-password-1"}' % email.encode()
    json_headers = [("content-type", "application/json")]
    attacker = ("198.51.100.66", 40000)
    for _ in range(2):
        r = await raw_request(limited, "POST", "/api/v1/auth/tokens", client=attacker, headers=json_headers, body=body)
        assert r.status == 401
    failed = await audit_events(limited, "auth.login_failed")
    assert failed == 2
    outcomes = {}
    for target in (
        "/api/v1/auth/tokens", "/api/v1/auth/tokens/", "/api/v1/auth/tokens//", "/api/v1/auth/tokens%2F",
        "/api/v1/auth/%74okens", "/api/v1/auth/tokens?x=1", "/API/V1/AUTH/TOKENS", "/api/v1/Auth/tokens",
        "//api/v1/auth/tokens", "/api/v1//auth/tokens", "/api/v1/auth/./tokens", "/api/v1/auth/x/../tokens",
        "/api/v1/auth/tokens;x", "/api/v1/auth/tokens%20", "/api/v1/auth/tokens/.",
    ):
        # A fresh peer each time would have a fresh budget: the same attacker throughout.
        r = await raw_request(limited, "POST", target, client=attacker, headers=json_headers, body=body)
        outcomes[target] = r.status
    # Spellings the router sends to the login handler are limited; the others are 404s.
    assert outcomes["/api/v1/auth/tokens"] == 429
    assert outcomes["/api/v1/auth/tokens/"] == 429
    assert outcomes["/api/v1/auth/tokens%2F"] == 429
    assert outcomes["/api/v1/auth/%74okens"] == 429
    assert outcomes["/api/v1/auth/tokens?x=1"] == 429
    assert set(outcomes.values()) <= {429, 404}, outcomes
    # No attempt reached the password check.
    assert await audit_events(limited, "auth.login_failed") == failed


async def test_ipv6_addresses_in_one_slash_56_share_a_budget(limited: FastAPI) -> None:
    inside = [
        "2001:db8:abcd:1200::1",
        "2001:db8:abcd:1234:5678:9abc:def0:1234",
        "2001:db8:abcd:12ff:ffff:ffff:ffff:fffe",
        "2001:0db8:abcd:12aa:0000:0000:0000:0001",
    ]
    statuses = [await _status(limited, client=(host, 40000)) for host in inside]
    assert statuses == [401, 401, 401, 429]
    # The neighbouring /56 is another customer.
    assert await _status(limited, client=("2001:db8:abcd:1300::1", 40000)) == 401
    assert await _status(limited, client=("2001:db8:abcd:11ff::1", 40000)) == 401


async def test_ipv4_mapped_ipv6_is_the_same_client(limited: FastAPI) -> None:
    statuses = [
        await _status(limited, client=(host, 40000))
        for host in ("192.0.2.44", "::ffff:192.0.2.44", "::ffff:c000:22c", "192.0.2.44")
    ]
    assert statuses == [401, 401, 401, 429]


async def test_ipv6_clients_behind_a_trusted_proxy_are_keyed_by_slash_56(limited: FastAPI) -> None:
    proxy = ("10.0.0.5", 50000)
    statuses = [
        await _status(limited, client=proxy, headers=[("X-Forwarded-For", f"2001:db8:beef:ab{i:02x}::{i + 1}")])
        for i in range(4)
    ]
    assert statuses == [401, 401, 401, 429]
