"""Deterministic races: hold concurrent requests together at the point where they collide."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest


def hold_together(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, count: int = 3, *, before: bool = False
) -> None:
    """Replace the coroutine function `owner.name` so that no caller goes on past it (or, with
    `before`, into it) until `count` callers have reached it: they all read the same state
    before any of them writes."""
    original: Callable[..., Awaitable[Any]] = getattr(owner, name)
    together = asyncio.Barrier(count)

    async def held(*args: Any, **kwargs: Any) -> Any:
        if before:
            await together.wait()
            return await original(*args, **kwargs)
        result = await original(*args, **kwargs)
        await together.wait()
        return result

    monkeypatch.setattr(owner, name, held)
