"""Graceful shutdown on a real server process, one worker and `--workers 2`.

The server runs `tests.e2e.graceful_app:create_app` (the real app plus `/e2e/slow`, which
sleeps then writes a row) through `python -m stalwart.server`, the same `run_server` path
as `stalwart serve`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.serving import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# Generous: under a loaded CI machine the probes below must still land inside the drain.
DRAIN = 3.0
SLOW = 6.5


class Server:
    def __init__(
        self, tmp_path: Path, workers: int, timeout: float = 15.0, drain: float = DRAIN
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = tmp_path / "data"
        self.data_dir.mkdir()
        with sqlite3.connect(self.data_dir / "stalwart.db") as db:
            db.execute("CREATE TABLE e2e_writes (id TEXT PRIMARY KEY)")
        self.log_path = tmp_path / "server.log"
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "STALWART_ENV": "test",
            "STALWART_DATA_DIR": str(self.data_dir),
            "STALWART_SHUTDOWN_DRAIN_SECONDS": str(drain),
            "STALWART_SHUTDOWN_TIMEOUT_SECONDS": str(timeout),
            "STALWART_RATE_LIMIT": "100000/15minutes",
            "STALWART_RATE_LIMIT_BACKEND": "memory",
            "STALWART_LOG_FORMAT": "json",
        }
        args = [
            sys.executable, "-m", "stalwart.server",
            "--app", "tests.e2e.graceful_app:create_app",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        self.workers = workers

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until every worker answers (each request on a new connection)."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(seen) < self.workers:
            assert self.proc.poll() is None, self.log()
            try:
                r = httpx.get(f"{self.url}/e2e/state", timeout=2, headers={"Connection": "close"})
                if r.status_code == 200:
                    seen.add(r.json()["pid"])
                    continue
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        assert len(seen) == self.workers, f"workers seen: {seen}\n{self.log()}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, object]]:
        records = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def rows(self) -> set[str]:
        with sqlite3.connect(self.data_dir / "stalwart.db") as db:
            return {row[0] for row in db.execute("SELECT id FROM e2e_writes")}


def slow_get(url: str, ident: str, seconds: float) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.get(f"{url}/e2e/slow", params={"id": ident, "seconds": seconds})


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_then_finishes_in_flight_requests_and_exits_0(
    tmp_path: Path, workers: int
) -> None:
    server = Server(tmp_path, workers)
    try:
        server.wait_ready()
        ids = [f"req-{n}" for n in range(8)]
        with ThreadPoolExecutor(max_workers=len(ids) + 3) as pool:
            futures: list[Future[httpx.Response]] = [
                pool.submit(slow_get, server.url, ident, SLOW) for ident in ids
            ]
            time.sleep(0.5)  # the requests are in the app, sleeping
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)

            # During the drain: still accepting, readiness 503, Connection: close.
            time.sleep(0.3)
            assert server.proc.poll() is None
            probes = [
                pool.submit(httpx.get, f"{server.url}{path}", timeout=5)
                for path in ("/health", "/health", "/e2e/state")
            ]
            *health, state = [p.result(timeout=10) for p in probes]
            assert time.monotonic() - signalled < DRAIN, "the probes came after the drain"
            assert [p.status_code for p in health] == [503, 503]
            assert all(p.headers["connection"] == "close" for p in health)
            assert state.status_code == 200
            assert state.json()["shutting_down"] is True
            assert state.json()["draining"] is True
            assert state.headers["connection"] == "close"

            # After the drain: the listener is closed while the slow requests still run.
            time.sleep(max(0.0, signalled + DRAIN - time.monotonic()))
            while not refused(server.port):
                assert time.monotonic() - signalled < DRAIN + 2.0, "still accepting after the drain"
                time.sleep(0.1)
            assert time.monotonic() - signalled < SLOW - 1.0, "too late to prove anything"
            assert not any(f.done() for f in futures)

            responses = [f.result(timeout=30) for f in futures]

        code = server.proc.wait(timeout=15)
        elapsed = time.monotonic() - signalled
    finally:
        server.kill()

    assert [r.status_code for r in responses] == [200] * len(ids)
    assert [r.json()["id"] for r in responses] == ids
    assert server.rows() == set(ids)
    assert code == 0, server.log()
    assert elapsed < DRAIN + SLOW + 5
    records = server.log_records()
    drained = [r for r in records if "readiness is 503" in str(r.get("message", ""))]
    assert len({r["process.pid"] for r in drained}) == workers
    finished = [r for r in records if str(r.get("message", "")).startswith("stopped accepting")]
    assert len(finished) == workers
    assert any(r.get("message") == "Application shutdown complete." for r in records)


@pytest.mark.parametrize("workers", [1, 2])
def test_second_signal_forces_exit(tmp_path: Path, workers: int) -> None:
    server = Server(tmp_path, workers, drain=0.5)
    try:
        server.wait_ready()
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(slow_get, server.url, f"r{n}", 60) for n in range(2)]
            time.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            forced = time.monotonic()
            server.proc.send_signal(signal.SIGINT)
            code = server.proc.wait(timeout=10)
            elapsed = time.monotonic() - forced
            for future in futures:
                with pytest.raises(httpx.HTTPError):
                    future.result(timeout=10)
    finally:
        server.kill()
    assert code == 1, server.log()
    assert elapsed < 3
    assert server.rows() == set()
    assert "received again" in server.log()


def test_in_flight_requests_are_cancelled_at_the_timeout_and_the_process_still_exits(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path, 1, timeout=1.0, drain=0.5)
    try:
        server.wait_ready()
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(slow_get, server.url, "too-slow", 60)
            time.sleep(0.5)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(timeout=15)
            elapsed = time.monotonic() - signalled
            # A request cancelled before it responded gets the policy's 503 problem (uvicorn's
            # own answer would be a plain-text 500).
            response = future.result(timeout=10)
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["request_id"]
    finally:
        server.kill()
    assert code == 0, server.log()
    assert 0.5 + 1.0 <= elapsed < 0.5 + 1.0 + 3  # drain + graceful timeout, then exit
    assert server.rows() == set()
    assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in server.log()
