"""Redis fixed-window counters shared by every worker and instance.

Same algorithm as the memory backend (a window anchored at a key's first hit), run
atomically by one Lua script. The script reads the clock with `TIME`, so instances with
skewed clocks agree on every window; the host clock is never used for a window.

Throughput: one `EVALSHA` round trip per request halves the service's throughput, so
hits are batched. The first hit of an idle backend starts a flusher task; every hit that
arrives before that task runs (the rest of the current event-loop tick) and while its
call is in flight joins the next batch. A batch is one `EVALSHA` over all its keys (split
into a pipeline of calls past MAX_KEYS_PER_CALL keys), and hits on the same key in a
batch become one count that the script applies as that many consecutive hits. Under load
that is one round trip per batch, never more than one per request, and little client CPU
per hit (redis-py's pure-Python reply parser costs more per reply than the hit itself).

Redis Cluster: a batch's keys would span slots; this backend needs a standalone Redis
(or one primary behind a proxy).

Outage: any error or a reply slower than `timeout` decides the affected hits without Redis
(`fail_open`: allowed; otherwise refused, which the middleware answers with 503). The
first failure logs one error, and for `retry_interval` seconds hits skip Redis entirely so
an outage costs no latency; then one batch probes it again. Recovery logs once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from stalwart.policies.rate_limit.backend import STATS
from stalwart.policies.rate_limit.policy import Decision, Policy

__all__ = ["HIT_SCRIPT", "RedisBackend"]

logger = logging.getLogger("stalwart.rate_limit")

# One call decides a whole batch. KEYS: counter hashes. ARGV[1]: clock offset in ms (tests);
# ARGV[i + 1]: "limit:window_ms:hits" for KEYS[i]. Returns "count_before:ms_to_reset,..."
# (one bulk string: far cheaper for the client to read than nested arrays).
HIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local limit, window, n = string.match(ARGV[i + 1], '^(%d+):(%d+):(%d+)$')
  limit = tonumber(limit)
  window = tonumber(window)
  n = tonumber(n)
  local v = redis.call('HMGET', key, 'c', 'r')
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
    redis.call('HSET', key, 'c', count + take, 'r', reset)
    if fresh then
      redis.call('PEXPIRE', key, reset - now)
    end
  end
  out[i] = string.format('%d:%d', count, reset - now)
end
return table.concat(out, ',')
"""

# Keys per script call: a script blocks Redis while it runs, so a huge batch is split.
MAX_KEYS_PER_CALL = 256

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
        self._specs: dict[Policy, bytes] = {}
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

    def _spec(self, policy: Policy) -> bytes:
        spec = self._specs.get(policy)
        if spec is None:
            spec = self._specs[policy] = b"%d:%d:" % (policy.limit, policy.window_ms)
        return spec

    async def _evaluate(self, calls: list[tuple[str, Policy, int]]) -> list[tuple[int, int]]:
        """(count before, ms to reset) per call, in order; one round trip for the lot."""
        if self._sha is None:
            self._sha = await self.redis.script_load(HIT_SCRIPT)
        prefix = self.prefix
        chunks: list[list[Any]] = []
        for start in range(0, len(calls), MAX_KEYS_PER_CALL):
            chunk = calls[start : start + MAX_KEYS_PER_CALL]
            chunks.append(
                [
                    len(chunk),
                    *[prefix + key for key, _, _ in chunk],
                    self.clock_offset_ms,
                    *[self._spec(policy) + b"%d" % n for _, policy, n in chunk],
                ]
            )
        replies = await self._run(chunks)
        results: list[tuple[int, int]] = []
        for reply in replies:
            for item in reply.split(b","):
                before, _, reset_ms = item.partition(b":")
                results.append((int(before), int(reset_ms)))
        return results

    async def _run(self, chunks: list[list[Any]]) -> list[bytes]:
        replies: list[Any] = [None] * len(chunks)
        todo = list(range(len(chunks)))
        for _ in range(2):
            sha = self._sha
            assert sha is not None
            if len(todo) == 1:
                try:
                    answers: list[Any] = [
                        await cast("Awaitable[bytes]", self.redis.evalsha(sha, *chunks[todo[0]]))
                    ]
                except NoScriptError as exc:
                    answers = [exc]
            else:
                pipe = self.redis.pipeline(transaction=False)
                for i in todo:
                    pipe.evalsha(sha, *chunks[i])
                answers = await pipe.execute(raise_on_error=False)
            missing = []
            for i, answer in zip(todo, answers, strict=True):
                if isinstance(answer, NoScriptError):
                    missing.append(i)
                elif isinstance(answer, BaseException):
                    raise answer
                else:
                    replies[i] = answer
            if not missing:
                return replies
            # Redis restarted or SCRIPT FLUSH: a NOSCRIPT call did not run, so resending is safe.
            self._sha = await self.redis.script_load(HIT_SCRIPT)
            todo = missing
        raise NoScriptError("the rate limit script vanished twice in a row")

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
