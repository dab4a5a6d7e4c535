"""In-process fixed-window counters (one process; exact because the event loop is single-threaded).

Algorithm: a fixed window anchored at a key's first hit (express-rate-limit's MemoryStore):
the first hit opens a window of `policy.window` seconds, at most `policy.limit` hits are
allowed in it, and the next hit after it ends opens a new one. Each key costs O(1) memory
and O(1) time per hit; the trade-off is that a client can spend one budget at the end of
a window and the next at the start of the following one.

Bounded memory: windows of the same length expire in the order they were opened, so one
deque per window length lists them oldest first, and once the earliest head's reset has
passed a hit drops every expired head (amortised O(1)). Past `max_keys` live keys the
window closest to its end is dropped early (that client starts afresh).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from stalwart.policies.rate_limit.backend import STATS
from stalwart.policies.rate_limit.policy import Decision, Policy

__all__ = ["MemoryBackend"]

# A NamedTuple's __new__ is Python code checking its arguments; the tuple constructor with all
# five fields builds the same Decision at about half the cost, on every request.
_decision = tuple.__new__


class _Window:
    __slots__ = ("count", "reset")

    def __init__(self, reset: float) -> None:
        self.count = 0
        self.reset = reset


class MemoryBackend:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 200_000) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self.hits = 0
        self.rejections = 0
        self.errors = 0
        self._windows: dict[str, _Window] = {}
        self._expiry: dict[int, deque[tuple[str, _Window]]] = {}
        # The earliest reset among the queue heads: until then there is nothing to expire.
        self._next_expiry = math.inf

    def __len__(self) -> int:
        return len(self._windows)

    async def hit(self, key: str, policy: Policy) -> Decision:
        return self.hit_nowait(key, policy)

    def hit_nowait(self, key: str, policy: Policy) -> Decision:
        """`hit` without a coroutine: nothing here awaits, which is what makes it atomic."""
        now = self.clock()
        if now >= self._next_expiry:
            self._expire(now)
        window = self._windows.get(key)
        if window is None or window.reset <= now:
            window = self._open(key, policy, now)
        self.hits += 1
        STATS.hits += 1
        count = window.count
        limit = policy.limit
        if count < limit:
            window.count = count = count + 1
            return _decision(Decision, (True, limit - count, window.reset - now, policy, False))
        self.rejections += 1
        STATS.rejections += 1
        return _decision(Decision, (False, 0, window.reset - now, policy, False))

    def _open(self, key: str, policy: Policy, now: float) -> _Window:
        queue = self._expiry.get(policy.window)
        if queue is None:
            queue = self._expiry[policy.window] = deque()
        if len(self._windows) >= self.max_keys:
            self._evict_oldest()
        window = self._windows[key] = _Window(now + policy.window)
        queue.append((key, window))
        if window.reset < self._next_expiry:
            self._next_expiry = window.reset
        return window

    def _expire(self, now: float) -> None:
        windows = self._windows
        next_expiry = math.inf
        for queue in self._expiry.values():
            while queue and queue[0][1].reset <= now:
                key, window = queue.popleft()
                if windows.get(key) is window:
                    del windows[key]
            if queue and queue[0][1].reset < next_expiry:
                next_expiry = queue[0][1].reset
        self._next_expiry = next_expiry

    def _evict_oldest(self) -> None:
        heads = [queue for queue in self._expiry.values() if queue]
        if heads:
            key, window = min(heads, key=lambda q: q[0][1].reset).popleft()
            if self._windows.get(key) is window:
                del self._windows[key]

    def clear(self) -> None:
        self._windows.clear()
        self._expiry.clear()
        self._next_expiry = math.inf

    async def aclose(self) -> None:
        self.clear()
