"""Request metrics: count and time every request by route template, method and status class.

Pure ASGI, slot 3 of the policy stack (inside the request log, outside everything that can
refuse a request, so 429s, 413s and 500s are counted too). Per request it reads a clock twice,
takes the response status from the request's shared send wrapper (policies/exchange.py, no
wrapper of its own), and after the app has run reads the
matched route template from `scope["route"]` (set by the router): never the raw path, so the
number of label values is bounded by the app's routes. Requests no route matched (404s,
refusals before routing) count as `<unmatched>`.

The figures go into a `RequestMetrics` (monitoring/recorder.py), normally the one of the app's
`Resources.monitoring`, found on the first request through `scope["app"]` when the stack is
built without it.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from stalwart.monitoring.recorder import KNOWN_METHODS, UNMATCHED_ROUTE, RequestMetrics
from stalwart.policies.exchange import watch
from stalwart.settings import Settings

__all__ = ["CLIENT_GONE_STATUS", "MetricsMiddleware", "metrics_middleware", "recorder_of"]

# nginx's code for "the client closed the connection before the response": no status was sent.
CLIENT_GONE_STATUS = 499
_perf_counter = time.perf_counter
_method_label = KNOWN_METHODS.get


def recorder_of(app: Any) -> RequestMetrics | None:
    """The recorder of an app built by `create_app` (its Resources' monitoring), if any."""
    resources = getattr(getattr(app, "state", None), "resources", None)
    monitoring = getattr(resources, "monitoring", None)
    recorder = getattr(monitoring, "recorder", None)
    return recorder if isinstance(recorder, RequestMetrics) else None


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, recorder: RequestMetrics | None = None) -> None:
        self.app = app
        self.recorder = recorder

    def _resolve(self, scope: Scope) -> RequestMetrics:
        recorder = recorder_of(scope.get("app")) or RequestMetrics()
        self.recorder = recorder
        return recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        recorder = self.recorder or self._resolve(scope)
        exchange, send = watch(scope, send)
        recorder.in_flight += 1
        started = _perf_counter()
        failed = False
        try:
            await self.app(scope, receive, send)
        except Exception:
            failed = True
            raise
        finally:
            duration = _perf_counter() - started
            recorder.in_flight -= 1
            # getattr on a missing route (None) gives the default too.
            recorder.record(
                getattr(scope.get("route"), "path", UNMATCHED_ROUTE),
                _method_label(scope["method"], "OTHER"),
                exchange.status or (500 if failed else CLIENT_GONE_STATUS),
                duration,
            )


def metrics_middleware(settings: Settings, resources: Any = None) -> Middleware | None:
    """The slot-3 middleware, or None when `metrics_enabled` is off."""
    if not settings.metrics_enabled:
        return None
    monitoring = getattr(resources, "monitoring", None)
    recorder = getattr(monitoring, "recorder", None)
    return Middleware(
        MetricsMiddleware, recorder=recorder if isinstance(recorder, RequestMetrics) else None
    )
