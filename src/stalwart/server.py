"""`stalwart serve`: uvicorn with a real graceful shutdown, for one process or many workers.

uvicorn on its own does not drain: on SIGTERM it closes the listening socket at once (no
delay for the load balancer to notice), waits for open connections with no time limit by
default, and re-raises the signal when done, so the process ends killed by SIGTERM rather
than with status 0. `GracefulServer` changes the sequence to:

1. signal: readiness flips at once (`Resources.shutting_down`, which `/health` reports as
   503, and the process-wide `policies.shutdown.drain_state`, which makes every response
   carry `Connection: close`);
2. `shutdown_drain_seconds` pass while the server still accepts and serves, so the load
   balancer sees the 503 and moves traffic away without a refused connection;
3. the listening socket closes; idle keep-alive connections are closed, busy ones close
   after their response; in-flight requests get `shutdown_timeout_seconds` to finish and
   are cancelled after that;
4. the lifespan shutdown closes the database pool and Redis; logs are flushed; exit 0.

A second SIGTERM/SIGINT forces the exit at once (status 1).

With `workers > 1` uvicorn's `Multiprocess` supervisor runs the workers. Its stock children
use the plain `uvicorn.Server`, it forwards SIGTERM only once it notices the signal (every
0.5 s), and it waits for the children without bound while holding its own copy of the
listening socket, which would keep the port accepting (and hanging) after every worker
stopped. `GracefulMultiprocess` forwards the first signal to every worker at once (each
then drains as above), releases its socket copy so the port refuses connections when the
last worker closes it, forwards a second signal (the workers then force-exit) and bounds
the wait. Workers ignore SIGINT: Ctrl+C reaches the whole process group, and the
supervisor's forwarded SIGTERM must stay the first and only signal a worker counts.

Each worker builds its app with the `stalwart.app:create_app` factory, reading `Settings`
from the same environment as the parent; the `settings` given to `run_server` govern the
server itself (drain, timeouts, logging).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

import uvicorn.supervisors.multiprocess as uvicorn_multiprocess
from uvicorn import Config, Server
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from stalwart.policies.shutdown import drain_state, is_draining
from stalwart.protocol import StalwartConfig, StalwartProtocol

if TYPE_CHECKING:
    # Not imported at run time: each worker imports this module before it can answer the
    # supervisor's first health check, so it stays light.
    from stalwart.settings import Settings

__all__ = [
    "APP_FACTORY",
    "FORCED_EXIT_CODE",
    "GracefulMultiprocess",
    "GracefulProcess",
    "GracefulServer",
    "build_config",
    "flush_logs",
    "freeze_startup_heap",
    "is_draining",
    "main",
    "run_server",
]

APP_FACTORY = "stalwart.app:create_app"
FORCED_EXIT_CODE = 1
# Time the supervisor allows a worker beyond drain + graceful timeout for its lifespan
# shutdown (pool and Redis close) before it kills it.
_SUPERVISOR_GRACE_SECONDS = 10.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long the supervisor waits for a worker to answer its health check. A spawned worker
# answers only after importing this module and configuring logging; on a loaded 2-core
# machine that took over uvicorn's default 5 s, and the supervisor then killed and
# respawned workers in a loop. A hung worker is still replaced, after this long.
_WORKER_HEALTHCHECK_SECONDS = 30

logger = logging.getLogger("stalwart.server")


def flush_logs() -> None:
    """Flush every logging handler and the standard streams.

    Needed explicitly: multiprocessing children end with `os._exit`, which skips the atexit
    hook that would otherwise flush logging.
    """
    loggers: list[logging.Logger] = [logging.getLogger()]
    registry = logging.Logger.manager.loggerDict.values()
    loggers += [item for item in registry if isinstance(item, logging.Logger)]
    for log in loggers:
        for handler in log.handlers:
            try:
                handler.flush()
            except Exception:  # noqa: S112 - a broken handler must not stop the exit
                continue
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: S112
            continue


def freeze_startup_heap() -> None:
    """Move everything alive after start-up out of the garbage collector's sight.

    By the time the server listens, the app, its routes, models, compiled statements and
    pools are built and live until exit: about 150,000 objects that every full collection
    would otherwise traverse again, for nothing, while requests wait. `gc.collect()` first,
    so start-up garbage is freed rather than frozen. The same as gunicorn users'
    `gc.freeze()` after preloading; with `--workers`, each worker does it after its own start.
    """
    gc.collect()
    gc.freeze()


def _mark_resources(app: Any) -> bool:
    """Set `shutting_down` on the app's Resources (looked up through wrapping middleware)."""
    for _ in range(16):
        if app is None:
            return False
        resources = getattr(getattr(app, "state", None), "resources", None)
        if resources is not None and hasattr(resources, "shutting_down"):
            resources.shutting_down = True
            return True
        app = getattr(app, "app", None)
    return False


class GracefulServer(Server):
    """uvicorn's Server with readiness flip, drain delay, bounded wait and forced second signal."""

    def __init__(
        self, config: Config, *, drain_seconds: float = 0.0, supervised: bool = False
    ) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.supervised = supervised
        self.drain_deadline: float | None = None
        self._resources_marked = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recording the signal (uvicorn appends it to `_captured_signals` and re-raises it
        # after shutdown) is what makes a drained process exit 0 instead of dying by SIGTERM.
        if self.supervised and sig == signal.SIGINT:
            return
        if self.drain_deadline is None:
            self.begin_drain(sig)
        else:
            self.force_exit_now(sig)

    def begin_drain(self, sig: int | None = None) -> None:
        drain_state.begin()
        self._resources_marked = self._mark()
        self.drain_deadline = time.monotonic() + self.drain_seconds
        logger.info(
            "%s received: readiness is 503, draining for %.1f s before closing the listener",
            signal.Signals(sig).name if sig is not None else "shutdown",
            self.drain_seconds,
            extra={"process.pid": os.getpid()},
        )

    def force_exit_now(self, sig: int) -> None:
        logger.warning(
            "%s received again: exiting now without waiting for in-flight requests",
            signal.Signals(sig).name,
            extra={"process.pid": os.getpid()},
        )
        flush_logs()
        os._exit(FORCED_EXIT_CODE)

    def _mark(self) -> bool:
        return _mark_resources(getattr(self.config, "loaded_app", None))

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)
        if self.drain_deadline is not None:
            if not self._resources_marked:  # the signal came before the app was loaded
                self._resources_marked = self._mark()
            if time.monotonic() >= self.drain_deadline:
                self.should_exit = True
                return True
        return should_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # Warnings through the configured formatter (uvicorn's log_config does not route them):
        # one JSON line, and in production no file path or source line. The same for exceptions
        # nothing caught (threads, `__del__`), which Python prints as bare tracebacks.
        from stalwart.logging_setup import route_uncaught_exceptions  # here: workers import this module light

        logging.captureWarnings(True)
        route_uncaught_exceptions()
        await super().startup(sockets=sockets)
        if self.started:
            freeze_startup_heap()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = time.monotonic()
        await super().shutdown(sockets=sockets)
        logger.info(
            "stopped accepting, finished in-flight requests and closed resources in %.2f s",
            time.monotonic() - started,
            extra={"process.pid": os.getpid()},
        )

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().serve(sockets=sockets)
        finally:
            flush_logs()


class GracefulProcess(Process):
    """A supervised worker that runs `GracefulServer` instead of uvicorn's Server."""

    def __init__(self, config: Config, sockets: list[socket.socket], drain_seconds: float) -> None:
        self.drain_seconds = drain_seconds
        super().__init__(config, sockets)

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = GracefulServer(
                self.config, drain_seconds=self.drain_seconds, supervised=True
            )
        return self._server

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        # Build the server before uvicorn starts its health-check thread, which reads it too.
        _ = self.server
        super().target(sockets)


class GracefulMultiprocess(Multiprocess):
    """uvicorn's supervisor, with prompt signal forwarding, socket release and a bounded wait."""

    def __init__(
        self,
        config: Config,
        sockets: list[socket.socket],
        *,
        drain_seconds: float,
        timeout_seconds: float,
        fixed_count: bool = False,
    ) -> None:
        super().__init__(config, sockets)
        self.drain_seconds = drain_seconds
        self.timeout_seconds = timeout_seconds
        # Workers that share no counters each admit 1/N of every budget: one more would
        # admit more than the budget in total, so SIGTTIN is refused.
        self.fixed_count = fixed_count
        self.stop_signals = 0
        self.forced = False
        self._signalled: set[int] = set()
        # Handled at once, not via uvicorn's queue polled every 0.5 s.
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)

    def _new_process(self, config: Config, sockets: list[socket.socket]) -> Process:
        return GracefulProcess(config, sockets, self.drain_seconds)

    def run(self) -> None:
        # uvicorn's supervisor builds each worker through the module-level name `Process`
        # (start, restart after a crash, SIGHUP, SIGTTIN); pointing it at our worker class for
        # the life of this supervisor (the only one in this process) swaps the class without
        # copying those four methods.
        original = uvicorn_multiprocess.Process
        uvicorn_multiprocess.Process = self._new_process  # type: ignore[assignment,misc]
        try:
            super().run()
        finally:
            uvicorn_multiprocess.Process = original  # type: ignore[misc]

    def handle_ttin(self) -> None:
        # Back up to the number started with is safe (each admits 1/that); past it is not.
        if self.fixed_count and self.processes_num >= self.config.workers:
            logger.warning(
                "SIGTTIN ignored: the workers share no counters without STALWART_REDIS_URL and each"
                " admits 1/%d of every budget; restart with the number of workers wanted",
                self.config.workers,
            )
            return
        super().handle_ttin()

    def _forward(self, sig: int) -> None:
        for process in list(self.processes):
            pid = process.pid
            if pid is None or process.exitcode is not None:
                continue
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
            self._signalled.add(pid)

    def _on_stop_signal(self, sig: int, frame: FrameType | None) -> None:
        self.stop_signals += 1
        name = signal.Signals(sig).name
        if self.stop_signals == 1:
            logger.info(
                "%s received: draining %d workers",
                name,
                len(self.processes),
                extra={"process.pid": os.getpid()},
            )
            self.should_exit.set()
            self._forward(signal.SIGTERM)
            # The workers hold their own copies; the port refuses connections once the last
            # worker closes its copy after the drain.
            for sock in self.sockets:
                sock.close()
        else:
            logger.warning(
                "%s received again: forcing the workers to exit",
                name,
                extra={"process.pid": os.getpid()},
            )
            self.forced = True
            self._forward(signal.SIGTERM)

    def terminate_all(self) -> None:
        # Workers already signalled must not get a second SIGTERM: they would read it as "force".
        for process in self.processes:
            if process.pid in self._signalled:
                process.parent_conn.close()
                process.child_conn.close()
            else:
                process.terminate()
                if process.pid is not None:
                    self._signalled.add(process.pid)

    def join_all(self) -> None:
        deadline = (
            time.monotonic() + self.drain_seconds + self.timeout_seconds + _SUPERVISOR_GRACE_SECONDS
        )
        for process in self.processes:
            while process.process.is_alive() and time.monotonic() < deadline:
                process.process.join(0.1)
            if process.process.is_alive():
                logger.error("worker [%s] did not stop in time: killing it", process.pid)
                self.forced = True
                process.process.kill()
                process.process.join()

    def exit_code(self) -> int:
        if self.forced:
            return FORCED_EXIT_CODE
        codes = [process.exitcode for process in self.processes]
        return 0 if all(code == 0 for code in codes) else FORCED_EXIT_CODE


def _log_config(settings: Settings) -> dict[str, Any] | None:
    from stalwart.logging_setup import uvicorn_log_config

    return uvicorn_log_config(settings)


def build_config(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    app: str = APP_FACTORY,
) -> Config:
    """The uvicorn Config for `stalwart serve` (also used by tests to check the choices)."""
    from stalwart.policies.headers import error_document_fields

    return StalwartConfig(
        app,
        # The protocol's own 400 carries what the headers policy sends on an error document.
        security_fields=error_document_fields(settings),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        # uvicorn's httptools protocol with the policy's prepared fields and problem+json
        # answers to malformed requests (protocol.py).
        http=StalwartProtocol,
        lifespan="on",
        # The policy layer resolves the client address from trusted proxies only
        # (policies/proxies.py); uvicorn must not trust X-Forwarded-For on its own.
        proxy_headers=False,
        server_header=False,
        date_header=True,
        # policies/request_log.py writes the access log.
        access_log=False,
        log_config=_log_config(settings),
        # asyncio.wait_for takes any number of seconds; uvicorn only annotates it as int.
        timeout_graceful_shutdown=cast("int", settings.shutdown_timeout_seconds),
        timeout_worker_healthcheck=_WORKER_HEALTHCHECK_SECONDS,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )


def run_server(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    *,
    app: str = APP_FACTORY,
) -> int:
    """Serve `app` (an import string of an app factory) until a signal; return the exit code.

    0 after a graceful shutdown; 1 if it was forced (second signal, or a worker that had to
    be killed); 3 (uvicorn's STARTUP_FAILURE) if the server could not start.
    """
    drain_state.reset()
    config = build_config(
        settings,
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        app=app,
    )
    from stalwart.settings import export_workers

    export_workers(config.workers)  # what each worker's settings say (Settings.workers)
    if config.workers > 1:
        shared = settings.rate_limits_shared
        if not shared:
            logger.warning(
                "%d workers share no rate-limit counters: each admits 1/%d of every budget%s;"
                " set STALWART_REDIS_URL (and the auto or redis backend) to count each budget once",
                config.workers,
                config.workers,
                "" if settings.redis_url else ", and the note cache is off",
            )
        sock = config.bind_socket()
        supervisor = GracefulMultiprocess(
            config,
            sockets=[sock],
            drain_seconds=settings.shutdown_drain_seconds,
            timeout_seconds=settings.shutdown_timeout_seconds,
            fixed_count=not shared,
        )
        supervisor.run()
        _before_exit()
        return supervisor.exit_code()
    server = GracefulServer(config, drain_seconds=settings.shutdown_drain_seconds)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits with STARTUP_FAILURE when startup fails
        return exc.code if isinstance(exc.code, int) else STARTUP_FAILURE
    if not server.started:
        return STARTUP_FAILURE
    _before_exit()
    return 0


def _before_exit() -> None:
    flush_logs()
    # Everything is closed by now. Freezing the heap spares the interpreter's final garbage
    # collections, measured at 1 to 3 s with the app loaded on a busy 2-core machine: time a
    # rolling restart would otherwise wait for nothing.
    gc.freeze()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m stalwart.server`: `stalwart serve` with an app factory of your choice."""
    parser = argparse.ArgumentParser(prog="python -m stalwart.server")
    parser.add_argument("--app", default=APP_FACTORY, help="app factory import string")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--ssl-certfile")
    parser.add_argument("--ssl-keyfile")
    args = parser.parse_args(argv)
    from stalwart.policies.rate_limit.factory import unsplittable_budgets
    from stalwart.settings import Settings

    settings = Settings()
    if problems := unsplittable_budgets(settings, args.workers or settings.workers):
        print("\n".join(f"unsafe: {problem}" for problem in problems), file=sys.stderr)
        return 1
    return run_server(
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers or settings.workers,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        app=args.app,
    )


if __name__ == "__main__":
    # Re-import under the package name so worker processes unpickle `stalwart.server`
    # classes, not copies living in `__main__`.
    from stalwart.server import main as _main

    raise SystemExit(_main())
