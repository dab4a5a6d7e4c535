"""Shared benchmark plumbing: start uvicorn servers in child processes, run wrk, take medians."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

__all__ = ["Result", "Server", "free_port", "median_of", "wrk"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """uvicorn serving an app factory (`module:function`) in a child process, on loopback only."""

    def __init__(self, factory: str, env: Mapping[str, str] | None = None, workers: int = 1,
                 extra: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.factory = factory
        self.env = {**os.environ, **(env or {})}
        self.workers = workers
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        cmd = [sys.executable, "-m", "uvicorn", "--factory", self.factory, "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", str(self.workers), "--no-access-log",
               "--no-proxy-headers", "--no-server-header", "--loop", "uvloop", "--http", "httptools",
               "--log-level", "warning", *self.extra]
        self.proc = subprocess.Popen(cmd, env=self.env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.factory} did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class Result:
    rps: float
    p99_ms: float
    errors: int


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, headers: Mapping[str, str] | None = None, seconds: int = 5, connections: int = 32,
        threads: int = 1) -> Result:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    assert url.startswith(("http://127.0.0.1", "http://[::1]")), "load goes to loopback only"
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    return Result(rps, _ms(*p99.groups()) if p99 else float("nan"), errors)


def median_of(results: Sequence[Result]) -> Result:
    return Result(
        statistics.median(r.rps for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.errors for r in results),
    )
