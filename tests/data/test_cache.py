"""The note cache: TTL, LRU bound, and a read that raced a write never stores stale rows."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from stalwart.data.cache import MemoryCache, NoteCache, RedisCache
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.anyio


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def _race(cache: NoteCache) -> None:
    value, generation = await cache.get("acct", "k")
    assert value is None
    await cache.invalidate("acct")  # a write commits while the reader queries the database
    await cache.set("acct", "k", b"old rows", generation)
    assert (await cache.get("acct", "k"))[0] is None
    value, generation = await cache.get("acct", "k")
    await cache.set("acct", "k", b"new rows", generation)
    assert (await cache.get("acct", "k"))[0] == b"new rows"
    await cache.invalidate("acct")
    assert (await cache.get("acct", "k"))[0] is None


async def test_memory_cache_refuses_a_value_read_before_a_write() -> None:
    await _race(MemoryCache(ttl=30, max_accounts=10))


async def test_memory_cache_expires_and_is_bounded() -> None:
    clock = Clock()
    cache = MemoryCache(ttl=5, max_accounts=2, clock=clock)
    for account in ("a", "b", "c"):
        _, gen = await cache.get(account, "k")
        await cache.set(account, "k", account.encode(), gen)
    assert (await cache.get("a", "k"))[0] is None  # evicted, least recently used
    assert (await cache.get("c", "k"))[0] == b"c"
    clock.now += 6
    assert (await cache.get("c", "k"))[0] is None


async def test_redis_cache_refuses_a_value_read_before_a_write(redis_prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        await _race(RedisCache(redis, redis_prefix, ttl=30))
    finally:
        await redis.aclose()


async def test_redis_cache_down_is_a_miss_not_an_error() -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    cache = RedisCache(redis, "x:", ttl=30)
    try:
        value, generation = await cache.get("acct", "k")
        assert value is None
        assert generation is None
        await cache.set("acct", "k", b"v", generation)
        await cache.invalidate("acct")
    finally:
        await redis.aclose()
