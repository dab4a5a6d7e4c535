"""Background tasks stop even when one swallows a cancellation."""

from __future__ import annotations

import asyncio
import logging

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


async def test_a_task_that_never_stops_is_named_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()

    async def immortal() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(immortal(), name="immortal-job")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="stalwart.background"):
        await cancel_all([task], rounds=3, wait=0.01)
    assert [r.getMessage() for r in caplog.records if r.name == "stalwart.background"] == [
        "1 background task(s) still running after being cancelled: immortal-job"
    ]
    stop.set()
    task.cancel()
    await asyncio.wait({task})
