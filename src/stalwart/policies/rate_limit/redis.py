"""Redis fixed-window counters shared by every worker and instance.

Same algorithm as the memory backend (a window anchored at a key's first hit), run
atomically by one Lua script. The script reads the clock with `TIME`, so instances with
skewed clocks agree on every window; the host clock is never used for a window.

Throughput: one `EVALSHA` round trip per request halves the service's throughput, so
hits are batched. The first hit of an idle backend starts a flusher task; every hit that
arrives before that task runs (the rest of the current event-loop tick) and while its
pipeline is in flight joins the next pipeline. Hits on the same key in one batch become
one script call with a count, which the script applies as that many consecutive hits.
Under load that is one round trip per batch, and never more than one per request.

Outage: any error or a reply slower than `timeout` decides the affected hits without Redis
(`fail_open`: allowed; otherwise refused, which the middleware answers with 503). The
first failure logs one error, and for `retry_interval` seconds hits skip Redis entirely so
an outage costs no latency; then one batch probes it again. Recovery logs once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from stalwart.policies.rate_limit.backend import STATS
from stalwart.policies.rate_limit.policy import Decision, Policy

__all__ = ["HIT_SCRIPT", "RedisBackend"]

logger = logging.getLogger("stalwart.rate_limit")

# KEYS[1] counter hash; ARGV: limit, window ms, hits in this call, clock offset ms (tests).
# Returns {count before these hits, ms until the window resets}.
HIT_SCRIPT = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[4])
local v = redis.call('HMGET', KEYS[1], 'c', 'r')
local count = tonumber(v[1])
local reset = tonumber(v[2])
local fresh = false
if count == nil or reset == nil or now >= reset then
  count = 0
  reset = now + window
  fresh = true
end
local take = math.min(n, limit - count)
if take > 0 then
  redis.call('HSET', KEYS[1], 'c', count + take, 'r', reset)
  if fresh then
    redis.call('PEXPIRE', KEYS[1], reset - now)
  end
end
return {count, reset - now}
"""

_Batch = dict[tuple[str, Policy], list["asyncio.Future[Decision]"]]
_FAILURES = (RedisError, OSError, TimeoutError)


class RedisBackend:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "stalwart:rl:",
        timeout: float = 0.5,
        fail_open: bool = True,
        retry_interval: float = 1.0,
        clock_offset_ms: int = 0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.timeout = timeout
        self.fail_open = fail_open
        self.retry_interval = retry_interval
        # Added to Redis's clock inside the script: lets tests jump past a window.
        self.clock_offset_ms = clock_offset_ms
        self.hits = 0
        self.rejections = 0
        self.errors = 0
        self.down = False
        self._retry_at = 0.0
        self._sha: str | None = None
        self._pending: _Batch = {}
        self._flusher: asyncio.Task[None] | None = None

    async def hit(self, key: str, policy: Policy) -> Decision:
        if self.down and time.monotonic() < self._retry_at:
            return self._degraded(policy)
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        waiters = self._pending.get((key, policy))
        if waiters is None:
            self._pending[(key, policy)] = [future]
        else:
            waiters.append(future)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        batch: _Batch = {}
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                await self._send(batch)
        except BaseException:
            # Cancelled at shutdown, or a bug: never leave a request waiting forever.
            for waiters in (*batch.values(), *self._pending.values()):
                for future in waiters:
                    future.cancel()
            self._pending = {}
            raise
        finally:
            self._flusher = None

    async def _send(self, batch: _Batch) -> None:
        items = list(batch.items())
        try:
            async with asyncio.timeout(self.timeout):
                calls = [(key, policy, len(waiters)) for (key, policy), waiters in items]
                replies = await self._evaluate(calls)
        except _FAILURES as exc:
            self._failed(exc, batch)
            return
        if self.down:
            self.down = False
            logger.info("rate limit backend recovered; counting in Redis again")
        for ((_, policy), waiters), (before, reset_ms) in zip(items, replies, strict=True):
            reset_after = reset_ms / 1000
            limit = policy.limit
            used = before
            for future in waiters:
                used += 1
                allowed = used <= limit
                self.hits += 1
                STATS.hits += 1
                if not allowed:
                    self.rejections += 1
                    STATS.rejections += 1
                if not future.done():
                    future.set_result(
                        Decision(allowed, limit - used if allowed else 0, reset_after, policy)
                    )

    async def _evaluate(self, calls: list[tuple[str, Policy, int]]) -> list[tuple[int, int]]:
        if self._sha is None:
            self._sha = await self.redis.script_load(HIT_SCRIPT)
        offset = self.clock_offset_ms
        prefix = self.prefix
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(2):
            pipe = self.redis.pipeline(transaction=False)
            for i in todo:
                key, policy, n = calls[i]
                pipe.evalsha(self._sha, 1, prefix + key, policy.limit, policy.window_ms, n, offset)
            results = await pipe.execute(raise_on_error=False)
            missing = []
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, NoScriptError):
                    missing.append(i)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    replies[i] = (int(result[0]), int(result[1]))
            if not missing:
                return replies
            # Redis restarted or SCRIPT FLUSH: a NOSCRIPT call did not run, so resending is safe.
            self._sha = await self.redis.script_load(HIT_SCRIPT)
            todo = missing
        raise NoScriptError("script vanished twice while loading")

    def _failed(self, exc: BaseException, batch: _Batch) -> None:
        self._retry_at = time.monotonic() + self.retry_interval
        if not self.down:
            self.down = True
            logger.error(
                "rate limit backend unreachable (%s); %s requests until it recovers",
                type(exc).__name__,
                "allowing" if self.fail_open else "refusing",
            )
        for (_, policy), waiters in batch.items():
            for future in waiters:
                if not future.done():
                    future.set_result(self._degraded(policy))

    def _degraded(self, policy: Policy) -> Decision:
        self.errors += 1
        STATS.errors += 1
        return Decision(self.fail_open, policy.limit, float(policy.window), policy, degraded=True)

    async def aclose(self) -> None:
        """Let in-flight hits finish; the Redis client belongs to whoever created it."""
        flusher = self._flusher
        if flusher is not None:
            await asyncio.wait({flusher}, timeout=self.timeout)
