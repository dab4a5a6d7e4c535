"""Throughput of a trivial route: bare app vs app + memory limiter vs app + Redis limiter.

Runs real uvicorn servers on loopback and drives them with wrk; the limit is set so high
that nothing is refused, so the figures are the limiter's own cost. Two client mixes:
"one client" (every request from 127.0.0.1: one key) and "many clients" (a wrk script
sends X-Forwarded-For from 10,000 addresses, which a stand-in for the proxies middleware
turns into scope["client"] in every variant, bare included).

    .venv/bin/python benchmarks/rate_limit.py [--runs 5] [--duration 5] [--connections 64]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VARIANTS = ("bare", "memory", "redis")
REDIS_URL = "redis://127.0.0.1:6379/0"

WRK_MANY_CLIENTS = """
math.randomseed(42)
request = function()
  local n = math.random(0, 9999)
  local ip = "10." .. math.floor(n / 256) .. "." .. (n % 256) .. ".1"
  return wrk.format("GET", "/x", { ["X-Forwarded-For"] = ip })
end
"""


# --- the app under test (imported by uvicorn in the server processes) --------------------
def create_app() -> Any:
    from redis.asyncio import Redis
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.types import ASGIApp, Receive, Scope, Send

    from stalwart.policies.rate_limit import (
        MemoryBackend,
        RateLimitMiddleware,
        RedisBackend,
        parse_policy,
    )

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    class ClientFromHeader:
        """Stands in for the trusted-proxies middleware: one header read, every variant."""

        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                for name, value in scope["headers"]:
                    if name == b"x-forwarded-for":
                        scope["client"] = (value.decode(), 0)
                        break
            await self.app(scope, receive, send)

    app: ASGIApp = Starlette(routes=[Route("/x", ok)])
    variant = os.environ["BENCH_VARIANT"]
    policy = parse_policy("1000000000/hour")
    if variant == "memory":
        app = RateLimitMiddleware(app, MemoryBackend(), policy=policy)
    elif variant == "redis":
        redis = Redis.from_url(REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        backend = RedisBackend(redis, prefix=os.environ["BENCH_PREFIX"], timeout=0.5)
        app = RateLimitMiddleware(app, backend, policy=policy)
    return ClientFromHeader(app)


# --- the driver ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(variant: str, prefix: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "BENCH_VARIANT": variant, "BENCH_PREFIX": prefix}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "rate_limit:create_app",
            "--app-dir",
            str(HERE),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--no-server-header",
            "--no-proxy-headers",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{variant} server did not start")


def wrk(port: int, duration: int, connections: int, script: str | None) -> tuple[float, int]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    if script:
        cmd += ["-s", script]
    cmd.append(f"http://127.0.0.1:{port}/x")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 30)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    errors = re.search(r"Socket errors: .*", out.stdout)
    if rps is None:
        raise RuntimeError(out.stdout + out.stderr)
    if errors:
        print("   wrk:", errors.group(0), file=sys.stderr)
    return float(rps.group(1)), int(bad.group(1)) if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()

    prefix = f"stalwart-bench-{uuid.uuid4().hex}:"
    servers = {v: start_server(v, prefix) for v in VARIANTS}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_MANY_CLIENTS)
        many_script = f.name
    mixes = {"one client": None, "many clients": many_script}
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for _, port in servers.values():
            wrk(port, 1, args.connections, many_script)  # warm-up (imports, pools, script load)
        for run in range(args.runs):
            for mix, script in mixes.items():
                # Interleaved, so drift in machine load affects every variant alike.
                for variant, (_, port) in servers.items():
                    rps, non_2xx = wrk(port, args.duration, args.connections, script)
                    if non_2xx:
                        raise RuntimeError(f"{variant}: {non_2xx} non-2xx responses")
                    results.setdefault((mix, variant), []).append(rps)
                    print(f"run {run + 1} {mix:12} {variant:6} {rps:10.0f} req/s", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(10)
        os.unlink(many_script)
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        client.close()

    print(
        f"\nwrk -t1 -c{args.connections} -d{args.duration:g}s, {args.runs} runs, "
        f"median req/s (ratio to bare); {os.cpu_count()} CPUs"
    )
    for mix in mixes:
        bare = statistics.median(results[(mix, "bare")])
        cells = []
        for variant in VARIANTS:
            median = statistics.median(results[(mix, variant)])
            cells.append(f"{variant} {median:8.0f} ({median / bare:.2f}x)")
        print(f"{mix:12}  " + "   ".join(cells))


if __name__ == "__main__":
    main()
