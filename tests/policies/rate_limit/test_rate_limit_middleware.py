"""The middleware on the memory backend: budgets, headers, keys, exemptions, per-route policies."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from stalwart.policies.rate_limit import (
    STATS,
    MemoryBackend,
    RateLimitMiddleware,
    RouteLimit,
    parse_policy,
)

from .conftest import FakeClock, client_for, limited_app

pytestmark = pytest.mark.anyio

POLICY_HEADER = '"100-in-15min";q=100;w=900'


async def test_101st_request_in_window_is_429_and_first_after_window_is_200(
    clock: FakeClock,
) -> None:
    app = limited_app(MemoryBackend(clock=clock))
    async with client_for(app) as client:
        for i in range(100):
            r = await client.get("/x")
            assert r.status_code == 200, i
            assert r.headers["ratelimit"] == f'"100-in-15min";r={99 - i};t=900'
        clock.advance(600)
        r = await client.get("/x")
        assert r.status_code == 429
        assert r.headers["retry-after"] == "300"
        clock.advance(299.5)
        r = await client.get("/x")
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        clock.now = 10_000.0 + 900  # exactly when the window opened by the first hit ends
        r = await client.get("/x")
        assert r.status_code == 200
        assert r.headers["ratelimit"] == '"100-in-15min";r=99;t=900'


async def test_exact_headers_on_allowed_and_refused_responses(clock: FakeClock) -> None:
    app = limited_app(MemoryBackend(clock=clock), "2/15minutes")
    async with client_for(app) as client:
        r = await client.get("/x")
        assert r.status_code == 200
        assert r.headers["ratelimit-policy"] == '"2-in-15min";q=2;w=900'
        assert r.headers["ratelimit"] == '"2-in-15min";r=1;t=900'
        assert "retry-after" not in r.headers
        clock.advance(100.5)
        r = await client.get("/missing")  # errors from the app are limited responses too
        assert r.status_code == 404
        assert r.headers["ratelimit-policy"] == '"2-in-15min";q=2;w=900'
        assert r.headers["ratelimit"] == '"2-in-15min";r=0;t=800'
        r = await client.get("/x")
        assert r.status_code == 429
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["ratelimit-policy"] == '"2-in-15min";q=2;w=900'
        assert r.headers["ratelimit"] == '"2-in-15min";r=0;t=800'
        assert r.headers["retry-after"] == "800"
        body = r.json()
        assert body["type"].endswith("/quota-exceeded")
        assert body["status"] == 429
        assert body["violated-policies"] == ["2-in-15min"]
        assert body["instance"] == "/x"
        assert int(r.headers["content-length"]) == len(r.content)


async def test_default_policy_headers(clock: FakeClock) -> None:
    async with client_for(limited_app(MemoryBackend(clock=clock))) as client:
        r = await client.get("/x")
    assert r.headers["ratelimit-policy"] == POLICY_HEADER
    assert r.headers["ratelimit"] == '"100-in-15min";r=99;t=900'


async def test_head_rejection_has_no_body(clock: FakeClock) -> None:
    async with client_for(limited_app(MemoryBackend(clock=clock), "1/minute")) as client:
        await client.get("/x")
        r = await client.head("/x")
    assert r.status_code == 429
    assert r.content == b""


async def test_health_probes_are_exempt(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock)
    async with client_for(limited_app(backend, "1/minute")) as client:
        for _ in range(5):
            for path in ("/health", "/health/live"):
                r = await client.get(path)
                assert r.status_code == 200
                assert "ratelimit" not in r.headers
        assert backend.hits == 0
        assert (await client.get("/x")).status_code == 200
        assert (await client.get("/x")).status_code == 429
        # Only the exact probe paths: a variant is limited like any other path.
        assert (await client.get("/health/")).status_code == 429


async def test_exempt_paths_are_a_constructor_argument(clock: FakeClock) -> None:
    app = limited_app(MemoryBackend(clock=clock), "1/minute", exempt_paths={"/x"})
    async with client_for(app) as client:
        assert [(await client.get("/x")).status_code for _ in range(3)] == [200, 200, 200]
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/health")).status_code == 429


async def test_ipv6_clients_are_keyed_by_their_56(clock: FakeClock) -> None:
    app = limited_app(MemoryBackend(clock=clock), "2/minute")
    statuses = []
    for ip in (
        "2001:db8:1:100::1",
        "2001:db8:1:1ff::2",
        "2001:db8:1:1aa:1:2:3:4",
        "2001:db8:1:200::1",
    ):
        async with client_for(app, ip) as client:
            statuses.append((await client.get("/x")).status_code)
    # The first three share 2001:db8:1:100::/56; the fourth is the next /56.
    assert statuses == [200, 200, 429, 200]


async def test_ipv6_prefix_is_configurable(clock: FakeClock) -> None:
    app = limited_app(MemoryBackend(clock=clock), "1/minute", ipv6_prefix=64)
    statuses = []
    for ip in ("2001:db8:1:100::1", "2001:db8:1:101::1", "2001:db8:1:100::2"):
        async with client_for(app, ip) as client:
            statuses.append((await client.get("/x")).status_code)
    assert statuses == [200, 200, 429]


async def test_ipv4_mapped_ipv6_shares_the_ipv4_budget(clock: FakeClock) -> None:
    app = limited_app(MemoryBackend(clock=clock), "2/minute")
    async with client_for(app, "198.51.100.9") as client:
        assert (await client.get("/x")).status_code == 200
    async with client_for(app, "::ffff:198.51.100.9") as client:
        assert (await client.get("/x")).status_code == 200
        assert (await client.get("/x")).status_code == 429
    async with client_for(app, "198.51.100.9") as client:
        assert (await client.get("/x")).status_code == 429
    async with client_for(app, "198.51.100.10") as client:
        assert (await client.get("/x")).status_code == 200


async def test_spoofed_forwarding_headers_do_not_change_the_budget(clock: FakeClock) -> None:
    app = limited_app(MemoryBackend(clock=clock), "3/minute")
    async with client_for(app) as client:
        statuses = [
            (await client.get("/x", headers=h)).status_code
            for h in (
                {"X-Forwarded-For": "198.51.100.1"},
                {"X-Forwarded-For": "198.51.100.2"},
                {"Forwarded": "for=198.51.100.3"},
                {"X-Real-IP": "198.51.100.4"},
                {"X-Forwarded-For": "198.51.100.5, 198.51.100.6"},
            )
        ]
    assert statuses == [200, 200, 200, 429, 429]


async def test_per_route_policy_has_its_own_stricter_budget(clock: FakeClock) -> None:
    login = parse_policy("3/15minutes")
    app = limited_app(
        MemoryBackend(clock=clock),
        "5/15minutes",
        routes=[("POST", "/api/v1/auth/tokens", login)],
    )
    async with client_for(app) as client:
        for i in range(3):
            r = await client.post("/api/v1/auth/tokens")
            assert r.status_code == 200
            assert r.headers["ratelimit-policy"] == '"3-in-15min";q=3;w=900'
            assert r.headers["ratelimit"] == f'"3-in-15min";r={2 - i};t=900'
        r = await client.post("/api/v1/auth/tokens")
        assert r.status_code == 429
        assert r.json()["violated-policies"] == ["3-in-15min"]
        # Path variants draw from the same budget instead of a fresh one.
        r = await client.post("/api/v1/auth/tokens/")
        assert r.status_code == 429
        assert r.headers["ratelimit-policy"] == '"3-in-15min";q=3;w=900'
        # Other methods on the path and other paths use the global budget.
        r = await client.get("/api/v1/auth/tokens")
        assert r.status_code == 200
        assert r.headers["ratelimit"] == '"5-in-15min";r=4;t=900'
        r = await client.get("/x")
        assert r.headers["ratelimit"] == '"5-in-15min";r=3;t=900'
    async with client_for(app, "198.51.100.77") as other:
        assert (await other.post("/api/v1/auth/tokens")).status_code == 200


async def test_per_route_templates_and_prefixes(clock: FakeClock) -> None:
    app = limited_app(
        MemoryBackend(clock=clock),
        "100/minute",
        routes=[
            RouteLimit("*", "/api/v1/notes/{note_id}", parse_policy("2/minute")),
            RouteLimit("GET", "/api/v1/admin/*", parse_policy("1/minute")),
        ],
    )
    async with client_for(app) as client:
        notes = [(await client.get(f"/api/v1/notes/{n}")).status_code for n in ("a", "b", "c")]
        assert notes == [200, 200, 429]
        r = await client.get("/api/v1/admin/stats")
        assert r.headers["ratelimit-policy"] == '"1-in-1min";q=1;w=60'
        assert (await client.get("/api/v1/admin/users")).status_code == 429
        r = await client.get("/x")
        assert r.headers["ratelimit"] == '"100-in-1min";r=99;t=60'


async def test_concurrent_burst_never_exceeds_the_limit() -> None:
    backend = MemoryBackend()
    app = limited_app(backend, "100/15minutes")
    async with client_for(app) as client:
        responses = await asyncio.gather(*(client.get("/x") for _ in range(300)))
    assert Counter(r.status_code for r in responses) == {200: 100, 429: 200}
    remaining = sorted(int(r.headers["ratelimit"].split("r=")[1].split(";")[0]) for r in responses)
    assert remaining[200:] == list(range(100))  # every allowed request saw a distinct count


async def test_rejections_are_counted_for_metrics(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock)
    app = limited_app(backend, "2/minute")
    before, hits_before = STATS.rejections, STATS.hits
    async with client_for(app) as client:
        for _ in range(5):
            await client.get("/x")
    assert (backend.hits, backend.rejections, backend.errors) == (5, 3, 0)
    assert app.rejections == 3
    assert STATS.rejections - before == 3
    assert STATS.hits - hits_before == 5


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    app = RateLimitMiddleware(inner, MemoryBackend(), policy=parse_policy("1/minute"))

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    for _ in range(3):
        await app({"type": "websocket", "path": "/x", "client": ("203.0.113.7", 1)}, receive, send)
        await app({"type": "lifespan"}, receive, send)
    assert seen == ["websocket", "lifespan"] * 3


async def test_request_without_client_address_is_still_limited(clock: FakeClock) -> None:
    app = limited_app(MemoryBackend(clock=clock), "1/minute")
    transport = httpx.ASGITransport(app=app)
    transport.client = None  # type: ignore[assignment]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/x")).status_code == 200
        assert (await client.get("/x")).status_code == 429
