"""Process-wide resources shared by the API and the policy layer, opened and closed by the lifespan."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from starlette.requests import Request

from stalwart.credentials import Passwords
from stalwart.data.cache import CachedReads, MemoryCache, NoteCache, RedisCache
from stalwart.data.engine import Database
from stalwart.monitoring.service import Monitoring
from stalwart.policies.rate_limit import RateLimitBackend
from stalwart.policies.rate_limit.factory import backend_from_settings, login_account_limiter
from stalwart.settings import Settings

if TYPE_CHECKING:
    from stalwart.ops.scheduler import Lifecycle

__all__ = ["CLOSE_SECONDS_MAX", "Resources"]

logger = logging.getLogger("stalwart.resources")
_CLOSE_TIMEOUT = 5.0
# The longest close() can take: its four bounded steps. A platform's stop timeout (compose
# stop_grace_period, Kubernetes terminationGracePeriodSeconds) must leave room for it after
# the drain and the in-flight timeout, or the process is killed before the pools are closed.
CLOSE_SECONDS_MAX = 4 * _CLOSE_TIMEOUT


@dataclass
class Resources:
    settings: Settings
    db: Database
    redis: Redis | None
    passwords: Passwords
    started_at: float = field(default_factory=time.time)
    # Set by the graceful-shutdown server when a signal arrives: readiness turns 503 at once.
    shutting_down: bool = False
    login_limiter: Callable[[str, Request], Awaitable[None]] | None = None
    # One limiter backend shared by the middleware and the per-account login budget.
    rate_limiter: RateLimitBackend | None = None
    # Data lifecycle (stalwart.ops.scheduler): scheduled purge and backups, admin backups.
    lifecycle: Lifecycle | None = None
    # Health checks, request metrics, alerts and their background tasks (stalwart.monitoring).
    monitoring: Monitoring | None = None

    @classmethod
    def create(cls, settings: Settings) -> Resources:
        redis = None
        if settings.redis_url:
            # from_url connects lazily: nothing is opened until the first command.
            redis = Redis.from_url(
                settings.redis_url,
                socket_timeout=settings.redis_timeout,
                socket_connect_timeout=settings.redis_timeout,
                health_check_interval=30,
            )
        rate_limiter = backend_from_settings(settings, redis)
        return cls(
            settings=settings, db=Database(settings), redis=redis, passwords=Passwords(settings),
            monitoring=Monitoring(settings), rate_limiter=rate_limiter,
            login_limiter=login_account_limiter(settings, rate_limiter),
        )

    async def check_login_budget(self, email: str, request: Request) -> None:
        """Per-account login budget against password guessing (raises 429 when spent)."""
        limiter = self.login_limiter
        if limiter is not None:
            await limiter(email, request)

    async def invalidate_notes(self, account_id: str) -> None:
        """Drop every cached read of this account's notes (call after each committed write)."""
        reads = self.db.reads
        if isinstance(reads, CachedReads):
            await reads.invalidate(account_id)

    def _note_cache(self) -> NoteCache | None:
        settings = self.settings
        if settings.cache_ttl_seconds <= 0:
            return None
        if self.redis is not None:
            return RedisCache(self.redis, settings.cache_key_prefix, settings.cache_ttl_seconds)
        if settings.workers > 1:
            # A write in one worker could not drop the other workers' copies: stale reads.
            return None
        return MemoryCache(settings.cache_ttl_seconds, settings.cache_max_entries)

    async def start(self) -> None:
        await self.db.start()
        cache = self._note_cache()
        if cache is not None:
            self.db.reads = CachedReads(self.db.reads, cache)
        if self.monitoring is not None:
            await self.monitoring.start(self)
        # --- data lifecycle hook (stalwart.ops.scheduler) ---
        from stalwart.ops.scheduler import Lifecycle

        self.lifecycle = Lifecycle(self)
        await self.lifecycle.start()
        # --- end data lifecycle hook ---

    async def close(self) -> None:
        # Each step is bounded: a dependency that stalls (a lock renewal waiting on Redis, a
        # pool waiting for a connection) must not keep a stopping process alive.
        # --- data lifecycle hook: stop the jobs before the database closes ---
        if self.lifecycle is not None:
            await _bounded("scheduled jobs", self.lifecycle.close())
        # --- end data lifecycle hook ---
        if self.monitoring is not None:
            await _bounded("monitoring", self.monitoring.stop())
        await _bounded("database", self.db.close())
        if self.redis is not None:
            await _bounded("redis", self.redis.aclose())


async def _bounded(name: str, step: Awaitable[None]) -> None:
    timeout = _CLOSE_TIMEOUT
    try:
        await asyncio.wait_for(step, timeout)
    except TimeoutError:
        logger.error("shutdown: closing %s took over %.1f s; abandoned", name, timeout)
