"""Redis fixed-window counters shared by every worker and instance.

Same algorithm as the memory backend (a window anchored at a key's first hit), run
atomically by one Lua script. The script reads the clock with `TIME`, so instances with
skewed clocks agree on every window; the host clock is never used for a window.

Throughput: one `EVALSHA` round trip per request halves the service's throughput, so
hits are batched. The first hit of an idle backend starts a flusher task; every hit that
arrives before that task runs (the rest of the current event-loop tick) and while its
call is in flight joins the next batch. A batch is one `EVALSHA` over all its keys (a few
pipelined ones past MAX_KEYS_PER_CALL keys), and hits on the same key in a batch become
one count that the script applies as that many consecutive hits. Under load that is one
round trip per batch, never more than one per request.

Leases: even batched, a hit that waits for Redis costs its request a suspension and a wake-up,
most of what the Redis limiter costs per request (benchmarks/scale.py). So when a policy's
limit is large, the call that counts a hit also takes a share of the budget for this process:
`limit // lease_divisor` more hits (none for limits under `lease_divisor`, such as the
default 100 per 15 minutes: those stay exact). The script grants the share like any hits
(never past the limit), and the following hits on that key are decided here, without a call,
until the share is spent or Redis's window ends. The budget stays one budget: the instances
together never admit more than the limit; shares left unspent when a window ends (or an
instance stops) are lost to that window, so a budget shared by N processes admits at least
`limit - N * (limit // lease_divisor)`. `RateLimit` remaining, for a hit decided from a share,
counts this process's hits since its last call and not other instances' since.

Client CPU is the other half of the cost: redis-py spends more packing arguments and
parsing replies than the hit itself, so the command is packed here (constant parts built
once), sent on a connection borrowed from the client's pool, and answered with a single
bulk string.

Outage: any error or a reply slower than `timeout` decides the affected hits without Redis
(`fail_open`: allowed; otherwise refused, which the middleware answers with 503). The
first failure logs one error, and for `retry_interval` seconds hits skip Redis entirely so
an outage costs no latency; then one batch probes it again. Recovery logs once.

Redis Cluster is not supported (a batch's keys span slots): use a standalone Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from stalwart.policies.rate_limit.backend import STATS
from stalwart.policies.rate_limit.policy import Decision, Policy

__all__ = ["DEFAULT_LEASE_DIVISOR", "HIT_SCRIPT", "MAX_KEYS_PER_CALL", "RedisBackend"]

logger = logging.getLogger("stalwart.rate_limit")

# One call decides a batch. KEYS: counter hashes. ARGV[1]: clock offset in ms (tests only);
# ARGV[2]: "limit:window_ms:hits" for each key, comma-separated, in KEYS order.
# Returns "count_before:ms_to_reset" per key, comma-separated: one bulk string is far
# cheaper for the client to read than nested arrays.
HIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local out = {}
local i = 0
for limit, window, n in string.gmatch(ARGV[2], '(%d+):(%d+):(%d+)') do
  i = i + 1
  local key = KEYS[i]
  limit = tonumber(limit)
  n = tonumber(n)
  local v = redis.call('HMGET', key, 'c', 'r')
  local count = tonumber(v[1])
  local reset = tonumber(v[2])
  local fresh = false
  if count == nil or reset == nil or now >= reset then
    count = 0
    reset = now + tonumber(window)
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
HIT_SCRIPT_SHA = hashlib.sha1(HIT_SCRIPT.encode(), usedforsecurity=False).hexdigest().encode()

# A script blocks Redis while it runs, so a huge batch is split into pipelined calls.
MAX_KEYS_PER_CALL = 256

_Entry = tuple[str, Policy, list["asyncio.Future[Decision]"]]

# A process takes at most 1/1024 of a budget at a time (see the module docstring).
DEFAULT_LEASE_DIVISOR = 1024
# Bounds the leases held at once; past it, new keys are counted in Redis hit by hit.
MAX_LEASES = 10_000


class _Lease:
    """Hits granted by Redis to this process for one key and policy, spent locally."""

    __slots__ = ("left", "limit_used", "policy", "until")

    def __init__(self, policy: Policy, left: int, limit_used: int, until: float) -> None:
        self.policy = policy
        self.left = left  # granted hits not yet spent
        self.limit_used = limit_used  # the key's count once the last spent hit is counted
        self.until = until  # the window's end on the backend's clock


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


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
        lease_divisor: int = DEFAULT_LEASE_DIVISOR,
        clock: Callable[[], float] = time.monotonic,
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
        # Calls to Redis: hits / round_trips is how well concurrent hits are coalesced.
        self.round_trips = 0
        self.down = False
        self._retry_at = 0.0
        self._sha = HIT_SCRIPT_SHA
        self._specs: dict[Policy, bytes] = {}
        self._pending: dict[object, _Entry] = {}
        self._flusher: asyncio.Task[None] | None = None
        # 0 turns leases off: every hit is counted in Redis.
        self.lease_divisor = lease_divisor
        self.clock = clock
        self._leases: dict[str, _Lease] = {}
        self._next_sweep = 0.0
        # The shares asked for in the call in flight (`_plan_shares`); one call at a time.
        self._planned: dict[tuple[str, Policy], int] = {}

    def hit_nowait(self, key: str, policy: Policy) -> Decision | None:
        """The hit decided from this process's share of the key's budget, or None when there
        is no share left and the hit must go to Redis (`hit`)."""
        lease = self._leases.get(key)
        if lease is None or lease.policy is not policy:
            return None
        now = self.clock()
        if lease.left <= 0 or now >= lease.until:
            del self._leases[key]
            return None
        lease.left -= 1
        lease.limit_used += 1
        self.hits += 1
        STATS.hits += 1
        return Decision(True, policy.limit - lease.limit_used, lease.until - now, policy)

    def _lease_size(self, policy: Policy) -> int:
        return policy.limit // self.lease_divisor if self.lease_divisor > 0 else 0

    async def hit(self, key: str, policy: Policy) -> Decision:
        decision = self.hit_nowait(key, policy)
        if decision is not None:
            return decision
        if self.down and time.monotonic() < self._retry_at:
            return self._degraded(policy)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decision] = loop.create_future()
        flusher = self._flusher
        if flusher is not None and flusher.get_loop() is not loop:
            # The previous event loop died mid-flush (tests, or a restarted loop): its
            # waiters are gone with it.
            self._flusher = flusher = None
            self._pending = {}
        pending = self._pending
        slot: object = key
        entry = pending.get(slot)
        if entry is not None and entry[1] is not policy:
            # Same key under another policy object: its own entry (the script runs both).
            slot = (key, id(policy))
            entry = pending.get(slot)
        if entry is None:
            pending[slot] = (key, policy, [future])
        else:
            entry[2].append(future)
        if flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        batch: list[_Entry] = []
        try:
            while self._pending:
                batch = list(self._pending.values())
                self._pending = {}
                await self._send(batch)
        except BaseException:
            # Cancelled at shutdown, or a bug: never leave a request waiting forever.
            for _, _, waiters in (*batch, *self._pending.values()):
                for future in waiters:
                    future.cancel()
            self._pending = {}
            raise
        finally:
            self._flusher = None

    async def _send(self, batch: list[_Entry]) -> None:
        # Shares end `reset_ms` after this, not after the reply arrives: Redis measured the
        # time to reset later than now, so a share never outlives its Redis window (another
        # process would already be spending the next window's budget).
        sent_at = self.clock()
        self._plan_shares(batch, sent_at)
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._evaluate(batch)
        except Exception as exc:
            # Unreachable, slow, or answering nonsense: decide without it, never a 500.
            self._failed(exc, batch)
            return
        if self.down:
            self.down = False
            logger.info("rate limit backend recovered; counting in Redis again")
        hits = rejections = 0
        now = self.clock()
        for (key, policy, waiters), (before, reset_ms) in zip(batch, replies, strict=True):
            reset_after = reset_ms / 1000
            limit = policy.limit
            used = before
            share = self._planned.get((key, policy), 0)
            if share:
                # The script counted up to `share` hits beyond the waiters' (never past the
                # limit): what the waiters leave of them is this process's to spend.
                granted = min(limit, before + len(waiters) + share) - before
                left = granted - len(waiters)
                if left > 0:
                    self._lease(key, policy, left, before + len(waiters), sent_at + reset_after, now)
            for future in waiters:
                used += 1
                hits += 1
                if used <= limit:
                    decision = Decision(True, limit - used, reset_after, policy)
                else:
                    rejections += 1
                    decision = Decision(False, 0, reset_after, policy)
                if not future.done():
                    future.set_result(decision)
        self.hits += hits
        self.rejections += rejections
        STATS.hits += hits
        STATS.rejections += rejections

    def _plan_shares(self, batch: list[_Entry], now: float) -> None:
        """Decide, before the call, which entries of `batch` also ask Redis for a share: only
        those whose share the lease table will have room for (a share asked for and not kept
        would be spent from the budget for nothing)."""
        planned: dict[tuple[str, Policy], int] = {}
        keys: set[str] = set()
        leases = self._leases
        room = -1  # not computed yet: most batches only top up keys already in the table
        for key, policy, _ in batch:
            share = self._lease_size(policy)
            if not share or key in keys:
                continue  # one share per key (a key under two policies keeps the first)
            if key not in leases:
                if room < 0:
                    if len(leases) >= MAX_LEASES and now >= self._next_sweep:
                        # Drop spent and ended shares, at most once a second: with every
                        # share live, a sweep per call would cost a pass over the table.
                        self._next_sweep = now + 1.0
                        self._leases = leases = {
                            k: lease for k, lease in leases.items() if lease.left > 0 and now < lease.until
                        }
                    room = MAX_LEASES - len(leases)
                if room <= 0:
                    continue  # full: this key is counted in Redis hit by hit
                room -= 1
            keys.add(key)
            planned[(key, policy)] = share
        self._planned = planned

    def _lease(self, key: str, policy: Policy, left: int, used: int, until: float, now: float) -> None:
        """Give this process `left` hits of `key`'s budget; `used`: the key's count in Redis
        without them."""
        leases = self._leases
        current = leases.get(key)
        if (
            current is not None
            and current.policy is policy
            and current.left > 0
            and now < current.until
            and current.limit_used <= used
        ):
            # A share still live from an earlier call in the same window (calls for one key
            # can follow each other while hits wait): both are this process's to spend. Redis
            # counted the earlier share's unspent hits in `used` already.
            current.limit_used = used - current.left
            current.left += left
            return
        leases[key] = _Lease(policy, left, used, until)

    def _spec(self, policy: Policy) -> bytes:
        spec = self._specs.get(policy)
        if spec is None:
            spec = self._specs[policy] = b"%d:%d:" % (policy.limit, policy.window_ms)
        return spec

    def _pack(self, batch: list[_Entry]) -> bytes:
        prefix = self.prefix
        parts = [b"*%d\r\n$7\r\nEVALSHA\r\n%s%s" % (len(batch) + 5, _bulk(self._sha), _bulk(b"%d" % len(batch)))]
        parts += [_bulk((prefix + key).encode()) for key, _, _ in batch]
        parts.append(_bulk(b"%d" % self.clock_offset_ms))
        planned = self._planned
        parts.append(_bulk(b",".join([self._spec(p) + b"%d" % (len(w) + planned.get((k, p), 0)) for k, p, w in batch])))
        return b"".join(parts)

    async def _evaluate(self, batch: list[_Entry]) -> list[tuple[int, int]]:
        """(count before, ms to reset) per entry, in order; one round trip for the lot."""
        chunks = [batch[i : i + MAX_KEYS_PER_CALL] for i in range(0, len(batch), MAX_KEYS_PER_CALL)]
        replies: list[Any] = [None] * len(chunks)
        todo = list(range(len(chunks)))
        for _ in range(2):
            answers = await self._roundtrip([self._pack(chunks[i]) for i in todo])
            missing = []
            for i, answer in zip(todo, answers, strict=True):
                if isinstance(answer, NoScriptError):
                    missing.append(i)
                elif isinstance(answer, BaseException):
                    raise answer
                else:
                    replies[i] = answer
            if not missing:
                break
            # Redis restarted or SCRIPT FLUSH: a NOSCRIPT call did not run, so resending is safe.
            self._sha = (await self.redis.script_load(HIT_SCRIPT)).encode()
            todo = missing
        else:
            raise NoScriptError("the rate limit script vanished twice in a row")
        results: list[tuple[int, int]] = []
        for reply in replies:
            if isinstance(reply, str):  # a client made with decode_responses=True
                reply = reply.encode()
            for item in reply.split(b","):
                before, _, reset_ms = item.partition(b":")
                results.append((int(before), int(reset_ms)))
        if len(results) != len(batch):
            raise ResponseError(f"rate limit script answered {len(results)} of {len(batch)} keys")
        return results

    async def _roundtrip(self, commands: list[bytes]) -> list[Any]:
        """Send packed commands in one write and read one reply each (errors as values)."""
        pool = self.redis.connection_pool
        self.round_trips += 1
        for attempt in range(2):
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.send_packed_command(b"".join(commands), check_health=False)
                answers: list[Any] = []
                for _ in commands:
                    try:
                        answers.append(await conn.read_response())
                    except ResponseError as exc:
                        answers.append(exc)
                return answers
            except RedisConnectionError:
                # A pooled connection can be stale after a Redis restart: one fresh attempt.
                # (If the script ran before the connection dropped, its hits count twice:
                # the error is on the strict side.)
                await conn.disconnect()
                if attempt:
                    raise
            except BaseException:
                # Cancelled or timed out mid-reply: the connection's state is unknown.
                await conn.disconnect()
                raise
            finally:
                await pool.release(conn)
        raise AssertionError("unreachable")

    def _failed(self, exc: BaseException, batch: list[_Entry]) -> None:
        self._retry_at = time.monotonic() + self.retry_interval
        if not self.down:
            self.down = True
            logger.error(
                "rate limit backend unavailable (%s); %s requests until it recovers",
                type(exc).__name__,
                "allowing" if self.fail_open else "refusing",
            )
        for _, policy, waiters in batch:
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
