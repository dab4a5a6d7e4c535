"""The one call: wrap any Starlette/FastAPI app in the whole production policy.

Middleware is listed outermost first and added in reverse, because each
`add_middleware` call wraps everything added before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware

from stalwart.policies.body_limit import body_limit_middleware
from stalwart.policies.compression import CompressionMiddleware
from stalwart.policies.cors import cors_middleware
from stalwart.policies.errors import ErrorMiddleware, install_error_handlers
from stalwart.policies.headers import security_headers_middleware
from stalwart.policies.https import https_redirect_middleware
from stalwart.policies.metrics import metrics_middleware
from stalwart.policies.proxies import proxy_headers_middleware
from stalwart.policies.rate_limit import rate_limit_middleware
from stalwart.policies.request_log import RequestLogMiddleware
from stalwart.policies.shutdown import ShutdownMiddleware
from stalwart.settings import Settings

__all__ = ["install_policies", "policy_middleware"]


def policy_middleware(
    settings: Settings, resources: Any = None, prepared_fields: bool | Callable[[], bool] = False
) -> list[Middleware]:
    """The policy middleware for `settings`, outermost first.

    `resources` (the service's Resources) shares its Redis client with the rate limiter.
    `prepared_fields`: whether the security headers may go to the server as one block
    (policies/exchange.py), or a callable asked when the app builds its middleware.
    """
    stack: list[Middleware] = []
    # 1. client address and scheme from trusted proxies only (policies/proxies.py)
    stack.append(proxy_headers_middleware(settings))
    # 2. request id + one access-log line per request (policies/request_log.py)
    stack.append(
        Middleware(
            RequestLogMiddleware,
            access_log=settings.access_log,
            anonymize=settings.effective_anonymize_ip,
        )
    )
    # 3. metrics: counters and latency per route template (policies/metrics.py)
    if (metrics := metrics_middleware(settings, resources)) is not None:
        stack.append(metrics)
    # 4. security headers on every response, errors included (policies/headers.py)
    stack.append(security_headers_middleware(settings, prepared_fields))
    stack.append(Middleware(ErrorMiddleware, debug=settings.debug and not settings.is_production))
    # 6. HTTPS only in production (policies/https.py)
    if (https_redirect := https_redirect_middleware(settings)) is not None:
        stack.append(https_redirect)
    # 7. graceful shutdown: Connection: close while draining (policies/shutdown.py)
    stack.append(Middleware(ShutdownMiddleware))
    # 8. CORS (policies/cors.py)
    stack.append(cors_middleware(settings))
    # 9. rate limiting (policies/rate_limit/)
    stack.append(rate_limit_middleware(settings, resources))
    # 10. body size limit, content type (policies/body_limit.py)
    stack.append(body_limit_middleware(settings))
    # 11. compression (policies/compression.py)
    stack.append(Middleware(CompressionMiddleware, minimum_size=settings.compression_min_size))
    return stack


def install_policies(app: Starlette, settings: Settings, resources: Any = None) -> None:
    """Wrap `app` in the policy stack and make its errors problem+json.

    Under `stalwart serve` the security headers go to the server as one prepared block
    (policies/exchange.py), which layers outside the stack cannot see or change. So that is
    done only if, when the app starts, the stack is still its outermost middleware: a layer
    added afterwards with `add_middleware` (decorated functions too) gets the fields one by one.
    """
    install_error_handlers(app, settings)
    outermost: list[Middleware] = []

    def still_outermost() -> bool:
        return app.user_middleware[:1] == outermost

    for middleware in reversed(policy_middleware(settings, resources, still_outermost)):
        app.add_middleware(middleware.cls, *middleware.args, **middleware.kwargs)
    outermost.append(app.user_middleware[0])
