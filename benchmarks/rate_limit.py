"""Throughput of a trivial route: bare app vs app + memory limiter vs app + Redis limiter.

Runs real uvicorn servers on loopback and drives them with wrk; the limit is set so high
that nothing is refused, so the figures are the limiter's own cost. Two client mixes:
"one client" (every request from 127.0.0.1: one key) and "many clients" (a wrk script
sends X-Forwarded-For from 10,000 addresses, which a stand-in for the proxies middleware
turns into scope["client"] in every variant, bare included).

    .venv/bin/python benchmarks/rate_limit.py [--runs 5] [--duration 5] [--connections 64]
    .venv/bin/python benchmarks/rate_limit.py --overhead   # in-process CPU cost per request

`--overhead` calls the middleware directly (no HTTP server, 64 concurrent callers, 10,000
client addresses) and prints CPU microseconds per request: the limiter's own cost, far
less sensitive to other load on the machine than req/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
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

    variant = os.environ["BENCH_VARIANT"]
    policy = parse_policy("1000000000/hour")
    backend: Any = None
    if variant == "memory":
        backend = MemoryBackend()
    elif variant == "redis":
        redis = Redis.from_url(REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
        backend = RedisBackend(redis, prefix=os.environ["BENCH_PREFIX"], timeout=0.5)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if isinstance(backend, RedisBackend):
            per_call = backend.hits / max(1, backend.round_trips)
            print(f"redis variant: {per_call:.1f} hits per round trip", file=sys.stderr)
            await backend.redis.aclose()

    app: ASGIApp = Starlette(routes=[Route("/x", ok)], lifespan=lifespan)
    if backend is not None:
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Run:
    def __init__(self, rps: float, server_us: float, redis_us: float) -> None:
        self.rps = rps
        self.server_us = server_us  # server CPU per request
        self.redis_us = redis_us  # redis-server CPU per request


def wrk(port: int, duration: int, connections: int, script: str | None) -> tuple[float, int, int]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    if script:
        cmd += ["-s", script]
    cmd.append(f"http://127.0.0.1:{port}/x")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 30)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    total = re.search(r"(\d+) requests in", out.stdout)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    errors = re.search(r"Socket errors: .*", out.stdout)
    if rps is None or total is None:
        raise RuntimeError(out.stdout + out.stderr)
    if errors:
        print("   wrk:", errors.group(0), file=sys.stderr)
    return float(rps.group(1)), int(total.group(1)), int(bad.group(1)) if bad else 0


def measure(
    proc: subprocess.Popen[bytes],
    port: int,
    args: argparse.Namespace,
    script: str | None,
    redis: Any,
) -> Run:
    cpu0, redis0 = cpu_seconds(proc.pid), redis_cpu_seconds(redis)
    rps, total, non_2xx = wrk(port, args.duration, args.connections, script)
    cpu1, redis1 = cpu_seconds(proc.pid), redis_cpu_seconds(redis)
    if non_2xx:
        raise RuntimeError(f"{non_2xx} non-2xx responses")
    return Run(rps, (cpu1 - cpu0) / total * 1e6, (redis1 - redis0) / total * 1e6)


async def _overhead() -> None:
    import asyncio

    from redis.asyncio import Redis
    from starlette.types import Message

    from stalwart.policies.rate_limit import MemoryBackend, RateLimitMiddleware, RedisBackend, parse_policy

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        pass

    ips = [f"10.{i // 256}.{i % 256}.1" for i in range(10_000)]
    policy = parse_policy("1000000000/hour")
    redis = Redis.from_url(REDIS_URL)
    prefix = f"stalwart-bench-{uuid.uuid4().hex}:"
    apps = {
        "bare": inner,
        "memory": RateLimitMiddleware(inner, MemoryBackend(), policy=policy),
        "redis": RateLimitMiddleware(inner, RedisBackend(redis, prefix=prefix), policy=policy),
    }

    async def run(app: Any, n: int) -> float:
        async def caller(w: int) -> None:
            for j in range(n // 64):
                client = (ips[(w * 131 + j) % len(ips)], 1)
                await app(
                    {"type": "http", "path": "/x", "method": "GET", "client": client, "headers": []}, receive, send
                )

        started = time.process_time()
        await asyncio.gather(*(caller(w) for w in range(64)))
        return (time.process_time() - started) / n * 1e6

    print("in-process CPU per request, us (best of 5 x 50,000):")
    try:
        for name, app in apps.items():
            await run(app, 20_000)
            print(f"  {name:7} {min([await run(app, 50_000) for _ in range(5)]):6.2f}")
    finally:
        keys = [key async for key in redis.scan_iter(match=prefix + "*", count=1000)]
        for i in range(0, len(keys), 1000):
            await redis.delete(*keys[i : i + 1000])
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--overhead", action="store_true", help="in-process CPU cost per request only")
    args = parser.parse_args()
    if args.overhead:
        import uvloop

        uvloop.run(_overhead())
        return

    import redis

    redis_client = redis.Redis.from_url(REDIS_URL)
    prefix = f"stalwart-bench-{uuid.uuid4().hex}:"
    servers = {v: start_server(v, prefix) for v in VARIANTS}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_MANY_CLIENTS)
        many_script = f.name
    mixes = {"one client": None, "many clients": many_script}
    results: dict[tuple[str, str], list[Run]] = {}
    try:
        for _, port in servers.values():
            wrk(port, 1, args.connections, many_script)  # warm-up (imports, pools, script load)
        for run in range(args.runs):
            for mix, script in mixes.items():
                # Interleaved in a fresh order each time, so drift in machine load
                # affects every variant alike.
                order = list(servers.items())
                random.shuffle(order)
                for variant, (proc, port) in order:
                    r = measure(proc, port, args, script, redis_client)
                    results.setdefault((mix, variant), []).append(r)
                    print(
                        f"run {run + 1} {mix:12} {variant:6} {r.rps:8.0f} req/s  "
                        f"server {r.server_us:5.1f} us/req  redis {r.redis_us:4.1f} us/req",
                        flush=True,
                    )
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(10)
        os.unlink(many_script)
        keys = list(redis_client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            redis_client.delete(*keys[i : i + 1000])
        redis_client.close()

    print(
        f"\nwrk -t1 -c{args.connections} -d{args.duration}s, {args.runs} interleaved runs, "
        f"medians; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print("throughput, req/s (ratio to bare):")
    for mix in mixes:
        bare = statistics.median(r.rps for r in results[(mix, "bare")])
        cells = []
        for variant in VARIANTS:
            median = statistics.median(r.rps for r in results[(mix, variant)])
            cells.append(f"{variant} {median:7.0f} ({median / bare:.2f}x)")
        print(f"  {mix:12}  " + "   ".join(cells))
    # CPU per request is steadier than req/s on a shared machine, and other load can only
    # add to it, so the least of the runs is the estimate; bare / variant is the throughput
    # ratio a CPU-bound server would reach with Redis on a core of its own.
    print("server CPU per request, least of the runs, us (bare / variant); redis-server CPU per request:")
    for mix in mixes:
        bare = min(r.server_us for r in results[(mix, "bare")])
        cells = []
        for variant in VARIANTS:
            least = min(r.server_us for r in results[(mix, variant)])
            cells.append(f"{variant} {least:5.1f} ({bare / least:.2f}x)")
        redis_us = min(r.redis_us for r in results[(mix, "redis")])
        print(f"  {mix:12}  " + "   ".join(cells) + f"   redis-server {redis_us:.1f}")


if __name__ == "__main__":
    main()
