"""api/deps.py: the shared dependencies, and that none of them costs a thread hop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastapi.dependencies.utils as dependency_utils
import httpx
import pytest

from tests.conftest import Account

pytestmark = pytest.mark.anyio


async def test_api_requests_resolve_their_dependencies_without_the_thread_pool(
    client: httpx.AsyncClient, alice: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastAPI runs every plain `def` dependency through run_in_threadpool: a thread hop per
    # request (~140 us of CPU). The shared dependencies are `async def` so no request pays it.
    hops: list[str] = []
    real = dependency_utils.run_in_threadpool

    async def recording(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__qualname__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(dependency_utils, "run_in_threadpool", recording)
    created = await client.post("/api/v1/notes", json={"title": "t", "body": "", "tags": []}, headers=alice.headers)
    listed = await client.get("/api/v1/notes", headers=alice.headers)
    one = await client.get(f"/api/v1/notes/{created.json()['id']}", headers=alice.headers)
    me = await client.get("/api/v1/me", headers=alice.headers)
    assert [created.status_code, listed.status_code, one.status_code, me.status_code] == [201, 200, 200, 200]
    assert hops == []
