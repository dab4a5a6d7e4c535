"""Background tasks stop even when one swallows a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from stalwart.background import cancel_all

pytestmark = pytest.mark.anyio


async def test_a_task_that_swallows_one_cancellation_is_still_stopped() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 0:  # what a lost cancellation inside wait_for looks like
                    swallowed += 1
                    continue
                raise

    async def failing() -> None:
        raise RuntimeError("boom")

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(failing())]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all(tasks), 5)
    assert swallowed == 1
    assert all(task.done() for task in tasks)
    assert tasks[0].cancelled()
