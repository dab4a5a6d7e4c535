"""Wiring: settings -> backend and middleware, slot 9 of the policy stack."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from stalwart.app import create_app
from stalwart.policies.rate_limit import (
    MemoryBackend,
    Policy,
    RateLimitMiddleware,
    RedisBackend,
    RouteLimit,
    backend_from_settings,
    login_account_policy,
    rate_limit_middleware,
)
from stalwart.policies.stack import install_policies, policy_middleware
from stalwart.settings import Settings
from tests.conftest import make_settings as service_settings

from .conftest import client_for, tiny_app

pytestmark = pytest.mark.anyio


def make_settings(**values: Any) -> Settings:
    return Settings(_env_file=None, env="test", **values)  # type: ignore[call-arg]


def test_defaults_are_100_per_15_minutes_per_ip_and_a_stricter_login() -> None:
    settings = make_settings(redis_url="", rate_limit_backend="auto")
    middleware = rate_limit_middleware(settings)
    assert middleware.cls is RateLimitMiddleware
    assert isinstance(middleware.args[0], MemoryBackend)
    assert middleware.kwargs["policy"] == Policy(100, 900, "100-in-15min")
    assert middleware.kwargs["routes"] == [
        RouteLimit("POST", "/api/v1/auth/tokens", Policy(10, 900, "10-in-15min")),
        RouteLimit("GET", "/api/monitor", Policy(1200, 900, "1200-in-15min")),
        RouteLimit("GET", "/metrics", Policy(1200, 900, "1200-in-15min")),
    ]
    assert middleware.kwargs["ipv6_prefix"] == 56
    assert login_account_policy(settings) == Policy(5, 900, "5-in-15min")


def test_slot_9_is_in_the_policy_stack() -> None:
    stack = policy_middleware(make_settings(rate_limit_backend="memory"))
    assert [m.cls for m in stack].count(RateLimitMiddleware) == 1


async def test_auto_backend_uses_the_shared_redis_client() -> None:
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        settings = make_settings(
            rate_limit_backend="auto",
            rate_limit_key_prefix="custom:",
            rate_limit_fail_open=False,
            redis_timeout=0.25,
            rate_limit_lease_divisor=0,
        )
        backend = rate_limit_middleware(settings, SimpleNamespace(redis=redis)).args[0]
        assert isinstance(backend, RedisBackend)
        assert backend.redis is redis
        assert (backend.prefix, backend.fail_open, backend.timeout) == ("custom:", False, 0.25)
        assert backend.lease_divisor == 0
        memory = backend_from_settings(make_settings(rate_limit_backend="memory"), redis)
        assert isinstance(memory, MemoryBackend)
    finally:
        await redis.aclose()


def test_a_shared_rate_limiter_on_resources_is_used_as_is() -> None:
    shared = MemoryBackend()
    middleware = rate_limit_middleware(make_settings(), SimpleNamespace(rate_limiter=shared))
    assert middleware.args[0] is shared


def test_redis_backend_without_redis_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="STALWART_REDIS_URL"):
        backend_from_settings(make_settings().model_copy(update={"rate_limit_backend": "redis"}))


def test_invalid_policy_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="invalid rate limit"):
        rate_limit_middleware(make_settings(rate_limit="lots", rate_limit_backend="memory"))


async def test_install_policies_limits_the_app() -> None:
    app = tiny_app()
    install_policies(app, make_settings(rate_limit="3/minute", rate_limit_backend="memory"))
    async with client_for(app) as client:
        statuses = [(await client.get("/x")).status_code for _ in range(4)]
        r = await client.get("/x")
        probe = await client.get("/health")
    assert statuses == [200, 200, 200, 429]
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["ratelimit-policy"] == '"3-in-1min";q=3;w=60'
    assert probe.status_code == 200


async def test_through_the_stack_budgets_follow_the_resolved_client_address() -> None:
    app = tiny_app()
    settings = make_settings(rate_limit="2/minute", rate_limit_backend="memory", trusted_proxies="10.0.0.0/8")
    install_policies(app, settings)

    async def statuses(peer: str, forwarded_for: list[str]) -> list[int]:
        async with client_for(app, peer) as client:
            return [(await client.get("/x", headers={"X-Forwarded-For": ip})).status_code for ip in forwarded_for]

    # From an untrusted peer a spoofed X-Forwarded-For is ignored: one budget.
    assert await statuses("203.0.113.7", ["198.51.100.1", "198.51.100.2", "198.51.100.3"]) == [
        200,
        200,
        429,
    ]
    # Behind a trusted proxy each forwarded client has its own budget, and runs out of it.
    assert await statuses("10.0.0.1", ["198.51.100.1", "198.51.100.2", "198.51.100.1"]) == [
        200,
        200,
        200,
    ]
    assert await statuses("10.0.0.2", ["198.51.100.1", "2001:db8:1:1ff::9"]) == [429, 200]


async def test_monitoring_routes_have_their_own_budget(tmp_path: Path) -> None:
    settings = service_settings(
        tmp_path, rate_limit="2/15minutes", rate_limit_monitoring="5/15minutes", monitor_token="m" * 32
    )
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.50", 1))
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        auth = {"Authorization": "Bearer " + "m" * 32}
        statuses = [(await c.get("/api/monitor", headers=auth)).status_code for _ in range(6)]
        other = [(await c.get("/api/v1/notes")).status_code for _ in range(3)]
    assert statuses == [200] * 5 + [429]
    assert other == [401, 401, 429]
