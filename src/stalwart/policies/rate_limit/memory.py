"""In-process fixed-window counters (one process; exact because the event loop is single-threaded).

Algorithm: a fixed window anchored at a key's first hit (express-rate-limit's MemoryStore):
the first hit opens a window of `policy.window` seconds, at most `policy.limit` hits are
allowed in it, and the next hit after it ends opens a new one. Each key costs O(1) memory
and O(1) time per hit; the trade-off is that a client can spend one budget at the end of
a window and the next at the start of the following one.

Bounded memory: windows of the same length expire in the order they were opened, so one
deque per window length lists them oldest first and every hit drops the expired heads
(amortised O(1)).
Past `max_keys` live keys the oldest window is dropped early (that client starts afresh).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from stalwart.policies.rate_limit.backend import STATS
from stalwart.policies.rate_limit.policy import Decision, Policy

__all__ = ["MemoryBackend"]


class _Window:
    __slots__ = ("count", "reset")

    def __init__(self, reset: float) -> None:
        self.count = 0
        self.reset = reset


class MemoryBackend:
    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 200_000
    ) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self.hits = 0
        self.rejections = 0
        self.errors = 0
        self._windows: dict[str, _Window] = {}
        self._expiry: dict[int, deque[tuple[str, _Window]]] = {}

    def __len__(self) -> int:
        return len(self._windows)

    async def hit(self, key: str, policy: Policy) -> Decision:
        return self.hit_nowait(key, policy)

    def hit_nowait(self, key: str, policy: Policy) -> Decision:
        """`hit` without a coroutine: nothing here awaits, which is what makes it atomic."""
        now = self.clock()
        windows = self._windows
        # One queue per window length in use (a handful): sweeping all keeps memory tight.
        for expiring in self._expiry.values():
            while expiring and expiring[0][1].reset <= now:
                old_key, old = expiring.popleft()
                if windows.get(old_key) is old:
                    del windows[old_key]
        queue = self._expiry.get(policy.window)
        if queue is None:
            queue = self._expiry[policy.window] = deque()
        window = windows.get(key)
        if window is None or window.reset <= now:
            if len(windows) >= self.max_keys and queue:
                old_key, old = queue.popleft()
                if windows.get(old_key) is old:
                    del windows[old_key]
            window = windows[key] = _Window(now + policy.window)
            queue.append((key, window))
        self.hits += 1
        STATS.hits += 1
        if window.count < policy.limit:
            window.count += 1
            return Decision(True, policy.limit - window.count, window.reset - now, policy)
        self.rejections += 1
        STATS.rejections += 1
        return Decision(False, 0, window.reset - now, policy)

    def clear(self) -> None:
        self._windows.clear()
        self._expiry.clear()

    async def aclose(self) -> None:
        self.clear()
