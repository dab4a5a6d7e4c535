"""The real app plus one slow, writing route, for the graceful-shutdown end-to-end test.

Test-only: served by `python -m stalwart.server --app tests.e2e.graceful_app:create_app`,
i.e. through the same `run_server` code path as `stalwart serve`.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI
from sqlalchemy import text

from stalwart.app import create_app as create_real_app
from stalwart.policies.shutdown import is_draining

__all__ = ["create_app"]


def create_app() -> FastAPI:
    app = create_real_app()
    resources = app.state.resources

    @app.get("/e2e/slow")
    async def slow(id: str, seconds: float) -> dict[str, object]:
        await asyncio.sleep(seconds)
        # Written after the sleep: only lands if the pool is still open, i.e. the lifespan
        # shutdown waited for this request. The test creates the table beforehand.
        async with resources.db.engine.begin() as conn:
            await conn.execute(text("INSERT INTO e2e_writes (id) VALUES (:id)"), {"id": id})
        return {"id": id, "pid": os.getpid()}

    @app.get("/e2e/state")
    async def state() -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "shutting_down": resources.shutting_down,
            "draining": is_draining(),
        }

    return app
