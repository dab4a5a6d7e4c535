"""stalwart.server: uvicorn configuration and the graceful-shutdown sequence, in process.

The real-process tests (signals, `--workers 2`, exit codes) are in
tests/e2e/test_graceful_shutdown.py.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn.supervisors.multiprocess as uvicorn_multiprocess
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from stalwart.logging_setup import uvicorn_log_config
from stalwart.policies.shutdown import ShutdownMiddleware, drain_state
from stalwart.protocol import StalwartConfig, StalwartProtocol
from stalwart.server import (
    APP_FACTORY,
    FORCED_EXIT_CODE,
    GracefulMultiprocess,
    GracefulServer,
    _mark_resources,
    build_config,
)
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio

EVENTS: list[str] = []


def tiny_app() -> Starlette:
    """An app factory shaped like create_app: Resources on app.state, a lifespan that closes."""
    resources = SimpleNamespace(shutting_down=False)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        EVENTS.append("startup")
        yield
        EVENTS.append("shutdown")

    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(float(request.query_params["s"]))
        EVENTS.append("slow done")
        return JSONResponse({"ok": True})

    async def ready(request: Request) -> JSONResponse:
        down = resources.shutting_down
        return JSONResponse({"ready": not down}, status_code=503 if down else 200)

    app = Starlette(routes=[Route("/slow", slow), Route("/ready", ready)], lifespan=lifespan)
    app.add_middleware(ShutdownMiddleware)
    app.state.resources = resources
    return app


@pytest.fixture(autouse=True)
def _isolate() -> Iterator[None]:
    """Reset the drain flag, and undo the logging configuration uvicorn's Config applies."""
    drain_state.reset()
    EVENTS.clear()
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved = {
        name: (log.level, list(log.handlers), log.propagate, log.disabled)
        for name, log in logging.Logger.manager.loggerDict.items()
        if isinstance(log, logging.Logger)
    }
    yield
    drain_state.reset()
    root.setLevel(saved_root[0])
    root.handlers[:] = saved_root[1]
    for name, log in logging.Logger.manager.loggerDict.items():
        if isinstance(log, logging.Logger) and name in saved:
            log.level, handlers, log.propagate, log.disabled = saved[name]
            log.handlers[:] = handlers


def test_uvicorn_is_configured_for_production(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, shutdown_timeout_seconds=12.5)
    config = build_config(
        settings, host="127.0.0.1", port=8123, workers=3, ssl_certfile="c.pem", ssl_keyfile="k.pem"
    )
    assert config.app == APP_FACTORY == "stalwart.app:create_app"
    assert config.factory is True
    assert config.workers == 3
    assert (config.host, config.port) == ("127.0.0.1", 8123)
    assert config.loop == "uvloop"
    assert config.http is StalwartProtocol
    assert config.proxy_headers is False  # policies/proxies.py decides whom to trust
    assert config.server_header is False
    assert config.date_header is True
    assert config.access_log is False
    assert config.lifespan == "on"
    assert config.timeout_graceful_shutdown == 12.5
    assert config.timeout_worker_healthcheck == 30
    assert (config.ssl_certfile, config.ssl_keyfile) == ("c.pem", "k.pem")
    assert config.log_config == uvicorn_log_config(settings)
    # The protocol's own 400 gets the headers policy's fields for an error document; they
    # travel with the config, which is what each worker process receives.
    assert isinstance(config, StalwartConfig)
    assert config.security_fields is not None
    assert pickle.loads(pickle.dumps(config)).security_fields == config.security_fields  # noqa: S301 (own bytes)
    http, https = config.security_fields
    assert b"strict-transport-security: max-age=31536000; includeSubDomains\r\n" in https
    assert b"x-frame-options: DENY\r\n" in http


def test_in_production_the_protocol_sends_hsts_over_https_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, env="production", hsts_max_age=600)
    config = build_config(settings)
    assert isinstance(config, StalwartConfig)
    assert config.security_fields is not None
    http, https = config.security_fields
    assert b"strict-transport-security" not in http
    assert b"strict-transport-security: max-age=600; includeSubDomains\r\n" in https


def test_workers_import_a_light_module() -> None:
    # A spawned worker must import stalwart.server before it can answer the supervisor's
    # health check: it must not drag pydantic settings in with it.
    code = "import sys, stalwart.server; print('stalwart.settings' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_mark_resources_finds_state_through_wrappers() -> None:
    resources = SimpleNamespace(shutting_down=False)
    inner = SimpleNamespace(state=SimpleNamespace(resources=resources))
    wrapped = SimpleNamespace(app=SimpleNamespace(app=inner))
    assert _mark_resources(wrapped) is True
    assert resources.shutting_down is True
    assert _mark_resources(SimpleNamespace(app=None)) is False


def _server(tmp_path: Path, drain: float, supervised: bool = False) -> GracefulServer:
    config = build_config(make_settings(tmp_path), app="tests.test_server:tiny_app", port=0)
    config.load()
    return GracefulServer(config, drain_seconds=drain, supervised=supervised)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_first_signal_flips_readiness_then_waits_the_drain(
    tmp_path: Path, sig: signal.Signals
) -> None:
    server = _server(tmp_path, drain=1.0)
    server.handle_exit(sig, None)
    assert drain_state.draining is True
    assert server.config.loaded_app.state.resources.shutting_down is True
    assert server.should_exit is False
    assert server._captured_signals == []  # never re-raised: the process exits 0
    assert await server.on_tick(1) is False
    assert server.drain_deadline is not None
    await asyncio.sleep(server.drain_deadline - time.monotonic() + 0.05)
    assert await server.on_tick(2) is True
    assert server.should_exit is True


async def test_second_signal_forces_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)

    monkeypatch.setattr("stalwart.server.os._exit", fake_exit)
    server = _server(tmp_path, drain=5)
    server.handle_exit(signal.SIGTERM, None)
    assert codes == []
    server.handle_exit(signal.SIGINT, None)
    assert codes == [FORCED_EXIT_CODE]


def test_supervised_worker_ignores_sigint_from_the_terminal(tmp_path: Path) -> None:
    server = _server(tmp_path, drain=5, supervised=True)
    server.handle_exit(signal.SIGINT, None)
    assert drain_state.draining is False
    server.handle_exit(signal.SIGTERM, None)
    assert drain_state.draining is True


def test_uvicorn_supervisor_still_builds_workers_through_its_module_level_process() -> None:
    # GracefulMultiprocess swaps `uvicorn.supervisors.multiprocess.Process` for its own
    # worker class; this fails if an upgrade stops building workers through that name.
    source = inspect.getsource(uvicorn_multiprocess.Multiprocess)
    assert source.count("Process(self.config, self.sockets)") == 4


async def test_serve_drains_finishes_in_flight_then_runs_lifespan_shutdown(
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = build_config(make_settings(tmp_path), app="tests.test_server:tiny_app", port=port)
    server = GracefulServer(config, drain_seconds=2.0)  # roomy: CI machines can be loaded
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.02)
        assert (await client.get("/ready")).status_code == 200
        slow = asyncio.create_task(client.get("/slow", params={"s": "3.0"}))
        await asyncio.sleep(0.2)
        signalled = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)

        async with httpx.AsyncClient(base_url=url, timeout=5) as fresh:
            ready = await fresh.get("/ready")
        assert ready.status_code == 503
        assert ready.headers["connection"] == "close"

        assert server.drain_deadline is not None
        await asyncio.sleep(server.drain_deadline - time.monotonic() + 0.3)  # past the drain
        assert not slow.done()
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=url, timeout=2) as late:
                await late.get("/ready")

        response = await slow
        assert response.status_code == 200
        assert response.headers["connection"] == "close"
    await asyncio.wait_for(task, timeout=10)
    assert time.monotonic() - signalled < 6
    assert EVENTS == ["startup", "slow done", "shutdown"]



@asynccontextmanager
async def _started(tmp_path: Path) -> AsyncIterator[GracefulServer]:
    """A GracefulServer serving tiny_app on a free loopback port, until the block ends."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = GracefulServer(build_config(make_settings(tmp_path), app="tests.test_server:tiny_app", port=port))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(250):
            if server.started:
                break
            await asyncio.sleep(0.02)
        assert server.started
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


async def test_startup_freezes_the_heap_it_built(tmp_path: Path) -> None:
    """After start-up the app's long-lived objects are out of the collector's sight
    (server.freeze_startup_heap)."""
    gc.unfreeze()
    try:
        async with _started(tmp_path):
            assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()


async def test_startup_routes_uncaught_exceptions_through_logging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thread and `__del__` errors become log records (logging_setup.route_uncaught_exceptions),
    not bare tracebacks on stderr."""
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    before = (threading.excepthook, sys.unraisablehook)
    async with _started(tmp_path):
        hooks = (threading.excepthook, sys.unraisablehook)
    assert hooks[0] is not before[0]
    assert hooks[1] is not before[1]
    assert [hook.__qualname__.split(".")[0] for hook in hooks] == ["route_uncaught_exceptions"] * 2


@pytest.mark.parametrize(("fixed", "added"), [(True, 0), (False, 1)])
def test_sigttin_adds_no_worker_when_workers_share_no_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixed: bool, added: int
) -> None:
    import stalwart.server as server_module

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        config = build_config(make_settings(tmp_path), app="tests.test_server:tiny_app", workers=2)
        supervisor = GracefulMultiprocess(config, [], drain_seconds=0, timeout_seconds=1, fixed_count=fixed)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    started: list[object] = []
    monkeypatch.setattr(uvicorn_multiprocess, "Process", lambda *a: SimpleNamespace(start=lambda: started.append(a)))
    warned: list[str] = []
    monkeypatch.setattr(server_module.logger, "warning", lambda message, *args: warned.append(message % args))
    supervisor.handle_ttin()
    assert (supervisor.processes_num, len(started)) == (2 + added, added)
    assert [w.startswith("SIGTTIN ignored: the workers share no counters") for w in warned] == (
        [True] if fixed else []
    )
    # After a SIGTTOU, back up to the number started with is safe: each still admits 1/2.
    supervisor.processes_num = 1
    supervisor.handle_ttin()
    assert supervisor.processes_num == 2
