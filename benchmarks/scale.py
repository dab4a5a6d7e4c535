"""Scaling and the policy stack: throughput and p99 of the full service beside a bare app.

For 1, 2 and 4 workers, in one run on one machine, wrk drives:

* a static JSON route: `GET /health/live` (the service's own; exempt from rate limiting, as
  load-balancer probes must be) and `GET /bench/static` (the same body on a route that goes
  through every middleware, the rate limiter included);
* `GET /api/v1/notes` (bearer token, 20 notes) on SQLite and on PostgreSQL;

against the full service (benchmarks/scale_apps.py `full_app`: `create_app()` in production
mode behind `python -m stalwart.server`, the `stalwart serve` code path, with the rate limit
set so high nothing is refused) with the in-memory limiter and with the Redis limiter (Redis
then also holds the note cache and the shared metrics), and against a bare FastAPI app
(`bare_app`, no middleware, on the same `python -m stalwart.server`) serving the same bytes
from the same database, and against the floor (`floor_app`: the bare app inside one
hand-written layer that sends the same response headers and access-log line and counts the
request, nothing else), which shows how much of the gap to the bare app is the policy's
visible output itself rather than the stack that produces it. Runs are
interleaved, so machine noise hits every server alike; each cell is the median of `--runs`.

    .venv/bin/python -m benchmarks.scale [--runs 3] [--seconds 5] [--workers 1,2,4]
        [--routes /bench/static@postgres,...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

import asyncpg
import httpx
import psutil
import redis

from benchmarks.common import Result, free_port, median_of, wrk
from stalwart.data.migrate import migrate_to

REPO = Path(__file__).resolve().parents[1]
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
# wrk is one client behind a trusted proxy that terminated TLS (production mode redirects
# plain HTTP otherwise); the bare app ignores both headers.
CLIENT_HEADERS = {"X-Forwarded-For": "203.0.113.10", "X-Forwarded-Proto": "https"}
VARIANTS = ("bare", "floor", "memory", "redis")
# (route, database): the static routes do not touch the database, so they run on the
# PostgreSQL servers only.
PLAN = [("/health/live", "postgres"), ("/bench/static", "postgres"),
        ("/api/v1/notes", "sqlite"), ("/api/v1/notes", "postgres")]


class StalwartServer:
    """An app factory behind `python -m stalwart.server` (the `stalwart serve` code path).

    Both apps run on it, the bare one too, so the comparison is of the apps alone: the
    server's own choices (uvloop, httptools, the start-up `gc.freeze`) apply to both.
    """

    def __init__(self, env: Mapping[str, str], workers: int, log: Path,
                 app: str = "benchmarks.scale_apps:full_app") -> None:
        self.app = app
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StalwartServer:
        cmd = [sys.executable, "-m", "stalwart.server", "--app", self.app,
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]
        # The access log (one JSON line per request, stdout) is written, as in production, and
        # dropped; the server's own log (stderr) is kept for a failed start.
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=subprocess.DEVNULL,
                                         stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.app} exited at start-up:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health/live", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.app} did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def pool_size(workers: int) -> int:
    """Per-process pool: 32 connections of load over the workers, and every PostgreSQL server of
    one round (4 servers x workers x (read pool + write pool)) under max_connections (100)."""
    return max(2, 10 // workers)


def _full_env(database_url: str, data_dir: Path, variant: str, prefix: str,
              workers: int = 1) -> dict[str, str]:
    env = {
        "STALWART_ENV": "production",
        "STALWART_SECRET_KEY": secrets.token_urlsafe(48),
        "STALWART_CORS_ORIGINS": "https://bench.example.com",
        "STALWART_TRUSTED_PROXIES": "127.0.0.1/32",
        "STALWART_DATABASE_URL": database_url,
        "STALWART_DATA_DIR": str(data_dir),
        "STALWART_RATE_LIMIT": "1000000000/hour",
        "STALWART_RATE_LIMIT_LOGIN": "1000000000/hour",
        "STALWART_RATE_LIMIT_LOGIN_ACCOUNT": "1000000000/hour",
        "STALWART_RATE_LIMIT_BACKEND": variant,
        "STALWART_PURGE_INTERVAL_HOURS": "0",
        "STALWART_DB_POOL_SIZE": str(pool_size(workers)),
        "STALWART_DB_MAX_OVERFLOW": "0",
    }
    if variant == "redis":
        env |= {
            "STALWART_REDIS_URL": REDIS_URL,
            "STALWART_RATE_LIMIT_KEY_PREFIX": f"{prefix}rl:",
            "STALWART_CACHE_KEY_PREFIX": f"{prefix}cache:",
            "STALWART_METRICS_KEY_PREFIX": f"{prefix}metrics:",
            "STALWART_SCHEDULER_LOCK_PREFIX": f"{prefix}lock:",
        }
    return env


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a server process and its workers."""
    total = 0.0
    parent = psutil.Process(pid)
    for proc in [parent, *parent.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _seed(url: str) -> str:
    """One account with 20 notes, through the API; returns its token."""
    email, password = f"bench-{uuid.uuid4().hex[:8]}@example.com", secrets.token_urlsafe(16)
    with httpx.Client(base_url=url, headers=CLIENT_HEADERS, timeout=30) as c:
        r = c.post("/api/v1/accounts", json={"email": email, "password": password, "display_name": "B"})
        r.raise_for_status()
        r = c.post("/api/v1/auth/tokens", json={"email": email, "password": password})
        r.raise_for_status()
        token = str(r.json()["token"])
        for i in range(20):
            r = c.post("/api/v1/notes", headers={"Authorization": f"Bearer {token}"},
                       json={"title": f"note {i}", "body": "body " * 20, "tags": ["a", "b"]})
            r.raise_for_status()
        r = c.get("/api/v1/notes", headers={"Authorization": f"Bearer {token}"})
        assert len(r.json()["data"]) == 20
    return token


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def databases(work: Path) -> Iterator[dict[str, str]]:
    """A migrated SQLite file and PostgreSQL database, dropped afterwards."""
    sqlite_url = f"sqlite+aiosqlite:///{work / 'bench.db'}"
    name = f"stalwart_bench_{uuid.uuid4().hex[:8]}"
    pg_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        migrate_to(sqlite_url, "head")
        migrate_to(pg_url, "head")
        yield {"sqlite": sqlite_url, "postgres": pg_url}
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--routes", default=",".join(f"{route}@{db}" for route, db in PLAN),
                        help="route@database pairs to run, comma-separated (default: all)")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    plan = [(route, db) for route, _, db in (pair.partition("@") for pair in args.routes.split(","))]
    if unknown := set(plan) - set(PLAN):
        parser.error(f"unknown routes: {sorted(unknown)}; known: {PLAN}")

    prefix = f"stalwart-bench-{uuid.uuid4().hex}:"
    # Production refuses a SQLite file in a temporary folder: keep it under ./var (ignored).
    work = REPO / "var" / f"bench-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    # (route, database, variant, workers) -> results, and server CPU microseconds per request
    results: dict[tuple[str, str, str, int], list[Result]] = {}
    cpu: dict[tuple[str, str, str, int], list[float]] = {}
    try:
        with databases(work) as all_urls:
            # Only the databases the chosen routes run on get servers.
            urls = {db: url for db, url in all_urls.items() if any(db == d for _, d in plan)}
            tokens = {}
            for db, url in urls.items():
                env = _full_env(url, work / f"seed-{db}", "memory", prefix)
                with StalwartServer(env, 1, work / f"seed-{db}.log") as seeder:
                    tokens[db] = _seed(seeder.url)
            for workers in worker_counts:
                with ExitStack() as stack:
                    servers: dict[tuple[str, str], StalwartServer] = {}
                    for db, url in urls.items():
                        for variant in ("bare", "floor"):
                            name = f"{db}-{variant}-{workers}"
                            servers[(db, variant)] = stack.enter_context(
                                StalwartServer({"BENCH_DATABASE_URL": url,
                                                "BENCH_POOL_SIZE": str(pool_size(workers)),
                                                "STALWART_DATA_DIR": str(work / name)},
                                               workers, work / f"{name}.log",
                                               app=f"benchmarks.scale_apps:{variant}_app")
                            )
                        for variant in ("memory", "redis"):
                            name = f"{db}-{variant}-{workers}"
                            env = _full_env(url, work / name, variant, prefix, workers)
                            servers[(db, variant)] = stack.enter_context(
                                StalwartServer(env, workers, work / f"{name}.log")
                            )
                    for route, db in plan:  # warm-up: imports, pools, caches, every worker
                        for variant in VARIANTS:
                            wrk(servers[(db, variant)].url + route, _headers(route, tokens[db]),
                                seconds=1, connections=args.connections)
                    for run in range(args.runs):
                        for route, db in plan:
                            for variant in VARIANTS:
                                server = servers[(db, variant)]
                                assert server.proc is not None
                                before = tree_cpu_seconds(server.proc.pid)
                                r = wrk(server.url + route, _headers(route, tokens[db]),
                                        seconds=args.seconds, connections=args.connections)
                                used = tree_cpu_seconds(server.proc.pid) - before
                                us = used / (r.rps * args.seconds) * 1e6
                                key = (route, db, variant, workers)
                                results.setdefault(key, []).append(r)
                                cpu.setdefault(key, []).append(us)
                                print(f"workers {workers} run {run + 1} {route:14} {db:8} "
                                      f"{variant:6} {r.rps:8.0f} req/s p99 {r.p99_ms:6.1f} ms "
                                      f"cpu {us:6.0f} us/req errors {r.errors}",
                                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    print(_table(results, worker_counts, args))
    print()
    print(_cpu_table(cpu, worker_counts))


_NAMES = {"bare": "bare FastAPI", "floor": "floor: bare + one layer, same output"}


def _headers(route: str, token: str) -> dict[str, str]:
    if route.startswith("/api/"):
        return {**CLIENT_HEADERS, "Authorization": f"Bearer {token}"}
    return CLIENT_HEADERS


def _render(cells: Callable[[str, str, str, int], str], routes: set[tuple[str, str]],
            worker_counts: list[int], heading: str) -> list[str]:
    """The markdown rows shared by both tables: one per route, database and server variant."""
    lines = [
        "| route | database | server | " + " | ".join(
            f"{w} worker{'s' if w > 1 else ''}: {heading}" for w in worker_counts
        ) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in worker_counts) + " |",
    ]
    ordered = sorted(routes, key=lambda k: (not k[0].startswith("/health"), k[0] != "/bench/static", k[1]))
    for route, db in ordered:
        for variant in VARIANTS:
            row = " | ".join(cells(route, db, variant, w) for w in worker_counts)
            name = _NAMES.get(variant) or f"Stalwart, {variant} limiter"
            lines.append(f"| `GET {route}` | {'-' if route.startswith(('/health', '/bench')) else db} "
                         f"| {name} | {row} |")
    return lines


def _table(results: dict[tuple[str, str, str, int], list[Result]], worker_counts: list[int],
           args: argparse.Namespace) -> str:
    def cell(route: str, db: str, variant: str, w: int) -> str:
        m = median_of(results[(route, db, variant, w)])
        bare = statistics.median(r.rps for r in results[(route, db, "bare", w)])
        ratio = "" if variant == "bare" else f" ({m.rps / bare:.0%})"
        errors = f", {m.errors} errors" if m.errors else ""
        return f"{m.rps:,.0f}{ratio}, {m.p99_ms:.1f} ms{errors}"

    load = os.getloadavg()[0]
    header = [
        f"wrk -t1 -c{args.connections} -d{args.seconds}s, median of {args.runs} interleaved runs; "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end",
        "",
    ]
    routes = {(route, db) for route, db, _, _ in results}
    return "\n".join(header + _render(cell, routes, worker_counts, "req/s (vs bare), p99"))


def _cpu_table(cpu: dict[tuple[str, str, str, int], list[float]], worker_counts: list[int]) -> str:
    """Server CPU per request: steadier than req/s on a shared machine. bare / full is the
    throughput share the full service keeps when the server, not the client, is the limit."""
    def cell(route: str, db: str, variant: str, w: int) -> str:
        us = statistics.median(cpu[(route, db, variant, w)])
        bare = statistics.median(cpu[(route, db, "bare", w)])
        return f"{us:.0f}" + ("" if variant == "bare" else f" ({bare / us:.0%})")

    routes = {(route, db) for route, db, _, _ in cpu}
    return "\n".join(_render(cell, routes, worker_counts, "CPU us/request (bare/this)"))


if __name__ == "__main__":
    main()
