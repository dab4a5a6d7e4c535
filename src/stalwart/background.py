"""Stopping background tasks reliably.

On Python 3.11 `asyncio.wait_for` can swallow a cancellation that arrives just as its inner
awaitable finishes; a loop around such a call then keeps running and `await task` after
`task.cancel()` never returns. Cancelling again until the task is done closes that gap.

Blocking work that may wait on a dependency without a bound (a backup's verification talks to
PostgreSQL) runs in a daemon thread (`run_in_daemon_thread`): a worker thread of anyio or of
the default executor is joined when the interpreter exits, so a stalled database kept the
process alive after its graceful shutdown had finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import ParamSpec, TypeVar

__all__ = ["cancel_all", "run_in_daemon_thread"]

logger = logging.getLogger("stalwart.background")

_P = ParamSpec("_P")
_T = TypeVar("_T")


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
    if pending:
        # Nothing more to do about them here, but an operator should know what keeps running.
        logger.warning(
            "%d background task(s) still running after being cancelled: %s",
            len(pending), ", ".join(sorted(task.get_name() for task in pending)),
        )
    for task in done:  # retrieve outcomes so none is reported as never retrieved
        if not task.cancelled():
            with contextlib.suppress(Exception):
                task.exception()


def _set_result(future: asyncio.Future[_T], result: _T) -> None:
    if not future.done():  # the caller may have been cancelled meanwhile
        future.set_result(result)


def _set_exception(future: asyncio.Future[_T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


async def run_in_daemon_thread(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """`fn(*args, **kwargs)` in a daemon thread of its own; a process that exits abandons it.

    Cancelling the caller stops waiting, not `fn`, as with any thread.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def target() -> None:
        deliver: Callable[[], None]
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller, whatever it is
            deliver = functools.partial(_set_exception, future, exc)
        else:
            deliver = functools.partial(_set_result, future, result)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            loop.call_soon_threadsafe(deliver)

    name = f"daemon:{getattr(fn, '__name__', 'call')}"
    threading.Thread(target=target, name=name, daemon=True).start()
    return await future
