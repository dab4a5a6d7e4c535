"""Server-side cache of hot note reads, invalidated on every write by the owner's account.

Entries live under one key per account (a Redis hash, or an in-process dict), so a write
drops everything cached for that account in one operation, and a read is one round trip.
Each account's entries carry a generation that every write replaces; a reader stores what it
read from the database only if the generation it saw before reading is still current, so a
read that raced a write cannot put the old rows back after the write's invalidation.
With Redis the cache is shared by every instance: a write on one instance is seen by the
next read on any other. The in-process LRU is for a single process only (the default
without Redis); several instances without Redis must turn it off (`cache_ttl_seconds=0`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from stalwart.data.reads import NoteQuery, NoteRow, Principal, ReadPath

__all__ = ["CachedReads", "MemoryCache", "NoteCache", "RedisCache"]

logger = logging.getLogger("stalwart.cache")


class NoteCache(Protocol):
    async def get(self, account_id: str, key: str) -> tuple[bytes | None, object]:
        """The cached value (or None) and the generation to hand back to `set`."""
        ...

    async def set(self, account_id: str, key: str, value: bytes, generation: object) -> None: ...
    async def invalidate(self, account_id: str) -> None: ...


class MemoryCache:
    """LRU over accounts, each entry with a time to live."""

    def __init__(self, ttl: float, max_accounts: int, clock: Callable[[], float] | None = None) -> None:
        self.ttl = ttl
        self.max_accounts = max_accounts
        self.clock = clock or time.monotonic
        self.accounts: OrderedDict[str, dict[str, tuple[float, bytes]]] = OrderedDict()
        self.generations: dict[str, int] = {}

    async def get(self, account_id: str, key: str) -> tuple[bytes | None, object]:
        generation = self.generations.get(account_id, 0)
        entries = self.accounts.get(account_id)
        if entries is None:
            return None, generation
        item = entries.get(key)
        if item is None:
            return None, generation
        expires, value = item
        if expires < self.clock():
            del entries[key]
            return None, generation
        self.accounts.move_to_end(account_id)
        return value, generation

    async def set(self, account_id: str, key: str, value: bytes, generation: object) -> None:
        if self.generations.get(account_id, 0) != generation:
            return  # a write happened while this value was read: it may be stale
        entries = self.accounts.setdefault(account_id, {})
        self.accounts.move_to_end(account_id)
        entries[key] = (self.clock() + self.ttl, value)
        while len(self.accounts) > self.max_accounts:
            evicted, _ = self.accounts.popitem(last=False)
            self.generations.pop(evicted, None)

    async def invalidate(self, account_id: str) -> None:
        self.accounts.pop(account_id, None)
        self.generations[account_id] = self.generations.get(account_id, 0) + 1


class RedisCache:
    """One Redis hash per account; errors degrade to a cache miss, never a failed request."""

    # Store only if the generation is still the one the reader saw ("" = no hash yet).
    _SET = """
    local gen = redis.call('HGET', KEYS[1], '~gen') or ''
    if gen ~= ARGV[1] then return 0 end
    redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return 1
    """
    # A write replaces the whole hash by a new generation: old entries and racing readers lose.
    _INVALIDATE = """
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], '~gen', ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
    """

    def __init__(self, redis: Redis, prefix: str, ttl: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_ms = max(int(ttl * 1000), 1)
        self.set_script = redis.register_script(self._SET)
        self.invalidate_script = redis.register_script(self._INVALIDATE)

    def _key(self, account_id: str) -> str:
        return f"{self.prefix}notes:{account_id}"

    async def get(self, account_id: str, key: str) -> tuple[bytes | None, object]:
        try:
            value, gen = await self.redis.hmget(self._key(account_id), [key, "~gen"])
        except (RedisError, OSError):
            return None, None
        # The client is created without decode_responses: Redis hands back bytes.
        generation = gen.decode() if isinstance(gen, bytes) else ""
        return (value if isinstance(value, bytes) else None), generation

    async def set(self, account_id: str, key: str, value: bytes, generation: object) -> None:
        if generation is None:  # Redis failed on read: do not cache
            return
        try:
            await self.set_script(
                keys=[self._key(account_id)], args=[str(generation), key, value, self.ttl_ms]
            )
        except (RedisError, OSError):
            return

    async def invalidate(self, account_id: str) -> None:
        try:
            await self.invalidate_script(
                keys=[self._key(account_id)], args=[uuid.uuid4().hex, self.ttl_ms * 10]
            )
        except (RedisError, OSError):
            # A failed invalidation can serve stale data for up to the TTL: say so loudly.
            logger.error("cache invalidation failed; entries expire within the TTL")


def _dump(rows: list[NoteRow]) -> bytes:
    return orjson.dumps([list(r) for r in rows])


def _load(raw: bytes) -> list[NoteRow]:
    return [
        NoteRow(r[0], r[1], r[2], r[3], datetime.fromisoformat(r[4]), datetime.fromisoformat(r[5]), r[6])
        for r in orjson.loads(raw)
    ]


def _list_key(query: NoteQuery) -> str:
    after = f"{query.after[0].isoformat()}|{query.after[1]}" if query.after else ""
    return orjson.dumps(["l", query.limit, after, query.tag, query.q, query.trashed]).decode()


class CachedReads:
    """The read path with note reads served from the cache when possible."""

    def __init__(self, inner: ReadPath, cache: NoteCache) -> None:
        self.inner = inner
        self.cache = cache

    async def principal(self, token_hash: str) -> Principal | None:
        # Never cached: a revoked token must stop working at once, on every instance.
        return await self.inner.principal(token_hash)

    async def get_note(self, account_id: str, note_id: str) -> NoteRow | None:
        key = "g" + note_id
        raw, generation = await self.cache.get(account_id, key)
        if raw is not None:
            rows = _load(raw)
            return rows[0] if rows else None
        row = await self.inner.get_note(account_id, note_id)
        await self.cache.set(account_id, key, _dump([row] if row else []), generation)
        return row

    async def list_notes(self, query: NoteQuery) -> list[NoteRow]:
        key = _list_key(query)
        raw, generation = await self.cache.get(query.account_id, key)
        if raw is not None:
            return _load(raw)
        rows = await self.inner.list_notes(query)
        await self.cache.set(query.account_id, key, _dump(rows), generation)
        return rows

    async def invalidate(self, account_id: str) -> None:
        await self.cache.invalidate(account_id)

    async def close(self) -> None:
        await self.inner.close()

    def pool_status(self) -> dict[str, int]:
        return self.inner.pool_status()
