"""Fixtures for the rate limiter: a fake clock, tiny apps, Redis with a per-test key prefix."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from stalwart.policies.rate_limit import RateLimitBackend, RateLimitMiddleware, parse_policy
from tests.conftest import REDIS_URL, require_service


class FakeClock:
    def __init__(self, start: float = 10_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def tiny_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/x", _ok),
            Route("/health", _ok),
            Route("/health/live", _ok),
            Route("/api/v1/auth/tokens", _ok, methods=["GET", "POST"]),
            Route("/api/v1/notes/{note_id}", _ok),
            Route("/api/v1/admin/{rest:path}", _ok),
        ]
    )


def limited_app(backend: RateLimitBackend, policy: str = "100/15minutes", **kwargs: Any) -> RateLimitMiddleware:
    return RateLimitMiddleware(tiny_app(), backend, policy=parse_policy(policy), **kwargs)


def client_for(app: ASGIApp, ip: str = "203.0.113.7") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key_prefix() -> str:
    return f"stalwart-test-{uuid.uuid4().hex}:"


async def _redis_up(client: Redis) -> bool:
    try:
        await asyncio.wait_for(client.ping(), 3)
    except (RedisError, OSError, TimeoutError):
        return False
    return True


def new_redis(url: str = REDIS_URL, timeout: float = 2.0) -> Redis:
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


@pytest.fixture
async def redis_client(key_prefix: str) -> AsyncIterator[Redis]:
    client = new_redis()
    if not await _redis_up(client):
        await client.aclose()
        require_service(False, "Redis at 127.0.0.1:6379")
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=key_prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
