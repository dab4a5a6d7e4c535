"""Stopping background tasks reliably.

On Python 3.11 `asyncio.wait_for` can swallow a cancellation that arrives just as its inner
awaitable finishes; a loop around such a call then keeps running and `await task` after
`task.cancel()` never returns. Cancelling again until the task is done closes that gap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

__all__ = ["cancel_all"]


async def cancel_all(tasks: Iterable[asyncio.Task[object]], rounds: int = 50, wait: float = 0.1) -> None:
    """Cancel `tasks` and wait for them, re-cancelling any that shrugged a cancellation off."""
    pending = {task for task in tasks if not task.done()}
    done: set[asyncio.Task[object]] = {task for task in tasks if task.done()}
    while pending and rounds > 0:
        for task in pending:
            task.cancel()
        finished, pending = await asyncio.wait(pending, timeout=wait)
        done |= finished
        rounds -= 1
    for task in done:  # retrieve outcomes so none is reported as never retrieved
        if not task.cancelled():
            with contextlib.suppress(Exception):
                task.exception()
