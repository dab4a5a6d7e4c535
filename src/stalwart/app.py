"""create_app: the reference API wrapped in the production policy layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from stalwart import __version__
from stalwart.api import include_api
from stalwart.api.docs import swagger_assets
from stalwart.api.openapi import install_openapi
from stalwart.policies.stack import install_policies
from stalwart.policies.static import mount_static, static_directory
from stalwart.resources import Resources
from stalwart.settings import Settings, production_problems

__all__ = ["UnsafeConfiguration", "create_app"]


class UnsafeConfiguration(RuntimeError):
    """Raised at start-up in production when the configuration is unsafe."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("unsafe production configuration:\n" + "\n".join(problems))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    problems = production_problems(settings)
    if problems:
        raise UnsafeConfiguration(problems)
    resources = Resources.create(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await resources.start()
        try:
            yield
        finally:
            await resources.close()

    app = FastAPI(
        title="Stalwart",
        version=__version__,
        description=(
            "A multi-user notes API that meets the production policy by default. "
            "Errors are RFC 9457 `application/problem+json`; lists are "
            '`{"data": [...], "next": url|null}`; single objects are returned as-is.'
        ),
        lifespan=lifespan,
        docs_url=None,  # served by stalwart.api.docs with self-hosted assets under a strict CSP
        redoc_url=None,
        debug=False,
        telemetry={
            "tracing": settings.opentelemetry,
            "metrics": settings.opentelemetry,
            "logs": settings.opentelemetry,
        },
    )
    app.state.settings = settings
    app.state.resources = resources
    include_api(app)
    # Both served as policies/static.py serves assets, knowing what the compression layer will do.
    app.mount("/docs/assets", swagger_assets(settings.compression_min_size), name="docs-assets")
    mount_static(app, static_directory(settings), compression_min_size=settings.compression_min_size)
    install_openapi(app)
    install_policies(app, settings, resources)
    return app
