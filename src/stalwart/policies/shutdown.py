"""Graceful shutdown, request side: `Connection: close` on every response once draining starts.

The signal handling lives in `stalwart.server`; when SIGTERM/SIGINT arrives it calls
`drain_state.begin()`. From then on each response tells the client (or the load balancer's
connection pool) to stop reusing this connection, so keep-alive connections end after
their current request instead of pinning a process that is about to exit.

`drain_state` is process-wide on purpose: a signal is delivered to a process, and every
app in the process (one per uvicorn worker) drains together. `is_draining()` is the read
side for anything else that needs it (readiness reads `Resources.shutting_down`, which the
server sets at the same moment).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable

from starlette.types import ASGIApp, Receive, Scope, Send

from stalwart.policies.exchange import Exchange, RawHeaders, watch

__all__ = ["DrainState", "ShutdownMiddleware", "drain_state", "is_draining"]

_CONNECTION_CLOSE = (b"connection", b"close")


class DrainState:
    """Whether this process has started to drain, and since when (monotonic seconds)."""

    __slots__ = ("draining", "since")

    def __init__(self) -> None:
        self.draining = False
        self.since: float | None = None

    def begin(self) -> None:
        if not self.draining:
            self.since = time.monotonic()
            self.draining = True

    def reset(self) -> None:
        self.draining = False
        self.since = None


drain_state = DrainState()


def is_draining() -> bool:
    """True once this process received its shutdown signal."""
    return drain_state.draining


class ShutdownMiddleware:
    """Pure ASGI: add `Connection: close` to responses while `state` is draining."""

    def __init__(self, app: ASGIApp, state: DrainState | None = None) -> None:
        self.app = app
        self.state = state if state is not None else drain_state

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function handing back the inner app's awaitable: one coroutine frame less per
        # request than `async def` (see policies/exchange.py on the per-layer costs).
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        exchange, send = watch(scope, send)
        # Hooked even while not draining: a request already running when the signal arrives
        # must still answer `Connection: close`.
        exchange.hooks.append(self._on_start)
        return self.app(scope, receive, send)

    def _on_start(self, exchange: Exchange, headers: RawHeaders) -> None:
        if self.state.draining:
            headers[:] = [(key, value) for key, value in headers if key.lower() != b"connection"]
            headers.append(_CONNECTION_CLOSE)
