"""Observability overhead: the full stack with and without request metrics and the access log.

Measurements, one run, same machine, variants interleaved so drift hits them alike:

1. hot path: one `RequestMetrics.record()` against prometheus-client's labelled
   `Counter.inc()` + `Histogram.observe()` (why the request path never calls prometheus-client);
2. the two middlewares alone around a bare ASGI app;
3. in process: `create_app()` (every policy middleware) driven directly through ASGI,
   GET /health/live, for metrics on/off x access log on/off;
4. over HTTP: one uvicorn worker per variant on loopback, loaded by wrk: requests/second, p99,
   and the server's CPU time per request.

2 to 4 report CPU time per request (this process's, or the server process's), which other
work on the machine disturbs far less than wall-clock time.

    .venv/bin/python benchmarks/observability.py [--runs 5] [--requests 20000] [--duration 5]
        [--markdown docs/performance.md]

With --markdown the figures replace the "Observability overhead" section of that file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from benchmarks.common import Result, free_port, median_of, wrk  # noqa: E402

VARIANTS: dict[str, dict[str, str]] = {
    "metrics + access log": {"STALWART_METRICS_ENABLED": "true", "STALWART_ACCESS_LOG": "true"},
    "metrics only": {"STALWART_METRICS_ENABLED": "true", "STALWART_ACCESS_LOG": "false"},
    "access log only": {"STALWART_METRICS_ENABLED": "false", "STALWART_ACCESS_LOG": "true"},
    "neither": {"STALWART_METRICS_ENABLED": "false", "STALWART_ACCESS_LOG": "false"},
}
PATH = "/health/live"


def base_env(data_dir: Path) -> dict[str, str]:
    return {
        "STALWART_ENV": "development",
        "STALWART_DATA_DIR": str(data_dir),
        "STALWART_RATE_LIMIT": "1000000000/15minutes",
        "STALWART_LOG_LEVEL": "WARNING",
    }


@contextlib.contextmanager
def stdout_to_devnull() -> Iterator[None]:
    """The access log writes to file descriptor 1; keep it off the terminal."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)


# --- 1. hot path -------------------------------------------------------------------------------
def hot_path(number: int = 200_000) -> dict[str, float]:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from stalwart.monitoring.recorder import RequestMetrics

    registry = CollectorRegistry()
    counter = Counter("requests", "", ["route", "method", "status_class"], registry=registry)
    histogram = Histogram("duration_seconds", "", ["route"], registry=registry)
    recorder = RequestMetrics()
    route = "/api/v1/notes/{note_id}"

    def with_prometheus() -> None:
        counter.labels(route, "GET", "2xx").inc()
        histogram.labels(route).observe(0.0012)

    def with_recorder() -> None:
        recorder.record(route, "GET", 200, 0.0012)

    out = {}
    for name, fn in (("prometheus-client", with_prometheus), ("RequestMetrics", with_recorder)):
        out[name] = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6
    return out


# --- 2a. the two middlewares alone --------------------------------------------------------------
def middleware_alone(runs: int, requests: int) -> dict[str, list[float]]:
    """A bare ASGI app, then wrapped in MetricsMiddleware and/or RequestLogMiddleware."""
    from stalwart.monitoring.recorder import RequestMetrics
    from stalwart.policies.metrics import MetricsMiddleware
    from stalwart.policies.request_log import ACCESS_LOG, RequestLogMiddleware

    headers = ((b"content-type", b"text/plain"), (b"content-length", b"2"))

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        # Fresh messages, as an app sends them: middleware may add headers to them.
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        await send({"type": "http.response.body", "body": b"ok"})

    apps: dict[str, Any] = {
        "metrics + access log": RequestLogMiddleware(
            MetricsMiddleware(bare, RequestMetrics()), access_log=True),
        "metrics only": MetricsMiddleware(bare, RequestMetrics()),
        "access log only": RequestLogMiddleware(bare, access_log=True),
        "neither": bare,
    }
    results: dict[str, list[float]] = {name: [] for name in apps}

    async def one(app: Any) -> float:
        await _drive(app, 1000)
        value = await _drive(app, requests)
        ACCESS_LOG.flush()
        return value

    with stdout_to_devnull():
        for _ in range(runs):
            for name, app in apps.items():
                results[name].append(asyncio.run(one(app)))
    return results


# --- 2. in process -----------------------------------------------------------------------------
async def _drive(app: Any, requests: int) -> float:
    """CPU microseconds per request (this process) for `requests` GET requests to `app`."""
    body = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return body

    async def send(message: Any) -> None:
        return None

    headers = [(b"host", b"127.0.0.1"), (b"user-agent", b"bench/1.0"), (b"accept", b"*/*")]
    started = time.process_time()
    for _ in range(requests):
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "root_path": "",
            "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000), "state": {},
        }
        await app(scope, receive, send)
    return (time.process_time() - started) / requests * 1e6


def in_process(runs: int, requests: int) -> dict[str, list[float]]:
    from stalwart.app import create_app
    from stalwart.policies.request_log import ACCESS_LOG
    from stalwart.settings import Settings

    results: dict[str, list[float]] = {name: [] for name in VARIANTS}

    async def one(name: str, data_dir: Path) -> float:
        env = VARIANTS[name]
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            env="development",
            data_dir=data_dir,
            rate_limit="1000000000/15minutes",
            metrics_enabled=env["STALWART_METRICS_ENABLED"] == "true",
            access_log=env["STALWART_ACCESS_LOG"] == "true",
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await _drive(app, 2000)  # warm-up
            per_request = await _drive(app, requests)
            ACCESS_LOG.flush()
        return per_request

    with tempfile.TemporaryDirectory() as tmp, stdout_to_devnull():
        for run in range(runs):
            for name in VARIANTS:
                results[name].append(asyncio.run(one(name, Path(tmp) / f"{run}-{len(name)}")))
    return results


# --- 3. over HTTP ------------------------------------------------------------------------------
class Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        import httpx

        cmd = [sys.executable, "-m", "uvicorn", "--factory", "stalwart.app:create_app",
               "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log",
               "--no-server-header", "--loop", "uvloop", "--http", "httptools",
               "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + PATH, timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def over_http(
    runs: int, duration: int, connections: int
) -> tuple[dict[str, list[Result]], dict[str, list[float]]]:
    """wrk results, and the server's CPU microseconds per request, per variant."""
    import psutil

    results: dict[str, list[Result]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            for name, env in VARIANTS.items():
                data_dir = Path(tmp) / f"{run}-{len(name)}"
                with Server({**base_env(data_dir), **env}) as server:
                    assert server.proc is not None
                    process = psutil.Process(server.proc.pid)
                    wrk(server.url + PATH, seconds=1, connections=connections)  # warm-up
                    before = process.cpu_times()
                    result = wrk(server.url + PATH, seconds=duration, connections=connections)
                    after = process.cpu_times()
                    used = (after.user - before.user) + (after.system - before.system)
                    results[name].append(result)
                    cpu[name].append(used / (result.rps * duration) * 1e6)
            print(f"  http run {run + 1}/{runs} done", file=sys.stderr)
    return results, cpu


# --- report ------------------------------------------------------------------------------------
def summary(alone: dict[str, list[float]], local: dict[str, list[float]]) -> str:
    def added(results: dict[str, list[float]], name: str) -> float:
        return statistics.median(results[name]) - statistics.median(results["neither"])

    return (
        f"**Summary**: request metrics add {added(alone, 'metrics only'):.1f} µs of CPU per "
        f"request on their own and {added(local, 'metrics only'):.1f} µs in the full stack; "
        f"the access log {added(alone, 'access log only'):.1f} µs and "
        f"{added(local, 'access log only'):.1f} µs; both together "
        f"{added(local, 'metrics + access log'):.1f} µs of a full-stack request's "
        f"{statistics.median(local['metrics + access log']):.0f} µs."
    )


def report(
    hot: dict[str, float],
    alone: dict[str, list[float]],
    local: dict[str, list[float]],
    http: tuple[dict[str, list[Result]], dict[str, list[float]]] | None,
    args: argparse.Namespace,
    load: tuple[float, float],
) -> str:
    lines = [
        "## Observability overhead",
        "",
        "What request metrics (`policies/metrics.py`, `STALWART_METRICS_ENABLED`) and the access "
        "log (`policies/request_log.py`, `STALWART_ACCESS_LOG`) cost per request, measured by "
        "`benchmarks/observability.py` in one run on one machine, variants interleaved, "
        f"medians of {args.runs} runs. Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}; load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end (other work shared the machine: "
        "CPU time per request is reported, which that disturbs far less than wall time).",
        "",
        summary(alone, local),
        "",
        "### Hot path: recording one request",
        "",
        "| recorder | µs per request |",
        "|---|---:|",
    ]
    for name, value in hot.items():
        lines.append(f"| {name} (`Counter.inc` + `Histogram.observe`) | {value:.2f} |"
                     if name == "prometheus-client" else f"| {name}.record | {value:.2f} |")
    lines += [
        "",
        "So the request path records into plain dicts and lists, and prometheus-client only "
        "renders them when `/metrics` is scraped (a custom Collector).",
        "",
        "### The two middlewares alone",
        "",
        f"A bare ASGI app answering 200, wrapped or not; {args.requests} requests per run.",
        "",
        "| variant | CPU µs per request (median) | added vs bare (median) | added (best run) |",
        "|---|---:|---:|---:|",
    ]
    bare_med, bare_min = statistics.median(alone["neither"]), min(alone["neither"])
    for name, values in alone.items():
        label = "bare app" if name == "neither" else name
        med = statistics.median(values)
        lines.append(
            f"| {label} | {med:.2f} | {med - bare_med:+.2f} | {min(values) - bare_min:+.2f} |"
        )
    lines += [
        "",
        f"### Full stack in process: GET {PATH} through every policy middleware",
        "",
        f"ASGI calls without a network ({args.requests} requests per run).",
        "",
        "| variant | CPU µs per request (median) | added vs neither (median) | added (best run) |",
        "|---|---:|---:|---:|",
    ]
    neither, neither_min = statistics.median(local["neither"]), min(local["neither"])
    for name, values in local.items():
        med = statistics.median(values)
        lines.append(
            f"| {name} | {med:.1f} | {med - neither:+.1f} | {min(values) - neither_min:+.1f} |"
        )
    if http is not None:
        runs_http, cpu_http = http
        lines += [
            "",
            f"### Over HTTP: one uvicorn worker, wrk on loopback (GET {PATH})",
            "",
            f"wrk -t1 -c{args.connections} -d{args.duration}s, {args.runs} runs per variant. "
            "wrk and the server share the machine's cores, so requests/s and p99 follow the "
            "machine's load; the server's CPU time per request (psutil, over the timed run) is "
            "the figure to compare.",
            "",
            "| variant | requests/s (median) | p99 ms (median) | server CPU µs per request "
            "(median) | added vs neither |",
            "|---|---:|---:|---:|---:|",
        ]
        base_cpu = statistics.median(cpu_http["neither"])
        for name, values in runs_http.items():
            med = median_of(values)
            cpu_med = statistics.median(cpu_http[name])
            lines.append(
                f"| {name} | {med.rps:,.0f} | {med.p99_ms:.2f} | {cpu_med:.1f} | "
                f"{cpu_med - base_cpu:+.1f} |"
            )
    lines.append("")
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Performance\n\n"
    pattern = re.compile(r"^## Observability overhead\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-http", action="store_true", help="skip the wrk part")
    parser.add_argument("--markdown", type=Path, help="write the section into this file")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    print("hot path...", file=sys.stderr)
    hot = hot_path()
    print("middleware alone...", file=sys.stderr)
    alone = middleware_alone(max(args.runs, 5), args.requests * 5)
    print("in process...", file=sys.stderr)
    local = in_process(args.runs, args.requests)
    http = None
    if not args.no_http:
        print("over HTTP...", file=sys.stderr)
        http = over_http(args.runs, args.duration, args.connections)
    section = report(hot, alone, local, http, args, (load_start, os.getloadavg()[0]))
    print(section)
    if args.markdown:
        write_section(args.markdown, section)


if __name__ == "__main__":
    main()
