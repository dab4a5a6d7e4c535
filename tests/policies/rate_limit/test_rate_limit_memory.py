"""The memory backend on its own: the public `hit` API, expiry, bounded memory."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from stalwart.policies.errors import install_error_handlers
from stalwart.policies.rate_limit import (
    Decision,
    MemoryBackend,
    QuotaExceededError,
    account_key,
    login_account_limiter,
    parse_policy,
    quota_exceeded,
)
from stalwart.settings import Settings

from .conftest import FakeClock, client_for

pytestmark = pytest.mark.anyio


async def test_hit_is_usable_from_a_route_for_per_account_budgets(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock)
    policy = parse_policy("5/15minutes")
    key = account_key("alice@example.com")
    decisions = [await backend.hit(key, policy) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[0] == Decision(True, 4, 900.0, policy)
    assert decisions[5] == Decision(False, 0, 900.0, policy)
    assert (await backend.hit(account_key("bob@example.com"), policy)).allowed
    clock.advance(900)
    assert await backend.hit(key, policy) == Decision(True, 4, 900.0, policy)


async def test_expired_windows_are_dropped(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock)
    short, long = parse_policy("10/minute"), parse_policy("10/hour")
    for i in range(1000):
        await backend.hit(f"short-{i}", short)
        await backend.hit(f"long-{i}", long)
    assert len(backend) == 2000
    clock.advance(60)
    await backend.hit("short-new", short)
    assert len(backend) == 1001  # the 1000 one-minute windows are gone
    clock.advance(3600)
    await backend.hit("long-new", long)
    assert len(backend) == 1  # every expired window is gone, whatever its length


async def test_live_keys_are_bounded(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock, max_keys=100)
    policy = parse_policy("10/hour")
    for i in range(1000):
        clock.advance(0.001)
        await backend.hit(f"k{i}", policy)
        assert len(backend) <= 100
    # The newest keys keep their counts; the oldest were dropped first.
    assert (await backend.hit("k999", policy)).remaining == 8
    assert (await backend.hit("k0", policy)).remaining == 9


async def test_a_reopened_window_survives_its_old_expiry_entry(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock)
    policy = parse_policy("3/minute")
    await backend.hit("k", policy)
    clock.advance(60)
    await backend.hit("k", policy)
    assert (await backend.hit("k", policy)).remaining == 1


async def test_a_route_refuses_with_the_same_problem_as_the_middleware(clock: FakeClock) -> None:
    backend = MemoryBackend(clock=clock)
    policy = parse_policy("2/15minutes")

    async def login(request: Request) -> Response:
        decision = await backend.hit(account_key("alice@example.com"), policy)
        if not decision.allowed:
            return quota_exceeded(request, decision)
        return PlainTextResponse("token")

    app = Starlette(routes=[Route("/login", login, methods=["POST"])])
    async with client_for(app) as client:
        statuses = [(await client.post("/login")).status_code for _ in range(2)]
        clock.advance(100.5)
        r = await client.post("/login")
    assert statuses == [200, 200]
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["ratelimit-policy"] == '"2-in-15min";q=2;w=900'
    assert r.headers["ratelimit"] == '"2-in-15min";r=0;t=800'
    assert r.headers["retry-after"] == "800"
    body = r.json()
    assert body["type"].endswith("/quota-exceeded")
    assert body["violated-policies"] == ["2-in-15min"]


async def test_route_refusal_when_the_store_is_down_and_fail_closed() -> None:
    policy = parse_policy("2/15minutes")
    request = Request({"type": "http", "method": "POST", "path": "/login", "headers": []})
    response = quota_exceeded(request, Decision(False, 2, 900.0, policy, degraded=True))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["ratelimit-policy"] == '"2-in-15min";q=2;w=900'
    assert "ratelimit" not in response.headers
    assert b"service-unavailable" in response.body


async def test_login_account_limiter_raises_a_429_problem_across_addresses(clock: FakeClock) -> None:
    settings = Settings(_env_file=None, env="test", rate_limit_login_account="3/15minutes")  # type: ignore[call-arg]
    limiter = login_account_limiter(settings, MemoryBackend(clock=clock))
    app = FastAPI()
    install_error_handlers(app, settings)

    @app.post("/login/{email}")
    async def login(email: str, request: Request) -> dict[str, str]:
        await limiter(email, request)
        return {"ok": email}

    statuses = []
    for n in range(4):  # spread over addresses: the account's budget still runs out
        async with client_for(app, f"198.51.100.{n}") as client:
            r = await client.post("/login/Victim@Example.com" if n % 2 else "/login/victim@example.com")
            statuses.append(r.status_code)
    assert statuses == [200, 200, 200, 429]
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "/problems/quota-exceeded"
    assert r.headers["ratelimit-policy"] == '"3-in-15min";q=3;w=900'
    assert r.headers["ratelimit"] == '"3-in-15min";r=0;t=900'
    assert r.headers["retry-after"] == "900"
    async with client_for(app) as client:
        assert (await client.post("/login/other@example.com")).status_code == 200
    error = QuotaExceededError(Decision(False, 0, 10.0, parse_policy("3/15minutes")))
    assert error.extra == {"violated-policies": ["3-in-15min"]}
