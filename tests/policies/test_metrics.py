"""The request-metrics middleware (src/stalwart/policies/metrics.py) and its recorder."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from stalwart.monitoring.aggregate import MergedMetrics
from stalwart.monitoring.histogram import BOUNDS, PROMETHEUS_BOUNDS, bucket_of, percentile
from stalwart.monitoring.recorder import OTHER_ROUTE, UNMATCHED_ROUTE, RequestMetrics
from stalwart.policies.metrics import MetricsMiddleware, metrics_middleware
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def tiny_app(recorder: RequestMetrics, seen: list[int] | None = None) -> MetricsMiddleware:
    async def item(request: Request) -> Response:
        if seen is not None:
            seen.append(recorder.in_flight)
        return PlainTextResponse("ok")

    async def fail(request: Request) -> Response:
        return PlainTextResponse("no", status_code=503)

    async def crash(request: Request) -> Response:
        raise RuntimeError("boom")

    async def mounted(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("static")(scope, receive, send)

    app = Starlette(
        routes=[
            Route("/items/{item_id}", item, methods=["GET", "POST"]),
            Route("/fail", fail),
            Route("/crash", crash),
            Mount("/assets", app=mounted),
        ]
    )
    return MetricsMiddleware(app, recorder)


def client_for(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_counts_by_route_template_never_raw_paths() -> None:
    recorder = RequestMetrics()
    async with client_for(tiny_app(recorder)) as client:
        for item_id in ("1", "2", "secret-looking-id-123"):
            assert (await client.get(f"/items/{item_id}")).status_code == 200
        assert (await client.post("/items/9")).status_code == 200
        assert (await client.get("/no/such/path/raw-path-marker")).status_code == 404
        assert (await client.get("/fail")).status_code == 503
        assert (await client.get("/assets/app.js")).status_code == 200
    assert recorder.counts == {
        ("/items/{item_id}", "GET", 2): 3,
        ("/items/{item_id}", "POST", 2): 1,
        (UNMATCHED_ROUTE, "GET", 4): 1,
        ("/fail", "GET", 5): 1,
        ("/assets", "GET", 2): 1,
    }
    snapshot = recorder.snapshot()
    assert sorted(snapshot["routes"]) == ["/assets", "/fail", "/items/{item_id}", UNMATCHED_ROUTE]
    # Words, not digits: a duration in the snapshot may hold any run of digits.
    assert "raw-path-marker" not in str(snapshot)
    assert "secret-looking" not in str(snapshot)


async def test_unknown_methods_share_one_label() -> None:
    recorder = RequestMetrics()
    async with client_for(tiny_app(recorder)) as client:
        await client.request("BREW", "/items/1")
        await client.request("PROPFIND", "/items/1")
    assert recorder.counts == {("/items/{item_id}", "OTHER", 4): 2}


async def test_exception_counts_as_500_and_propagates() -> None:
    recorder = RequestMetrics()
    app = tiny_app(recorder)
    transport = httpx.ASGITransport(app=app)  # raise_app_exceptions=True
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(RuntimeError, match="boom"):
            await client.get("/crash")
    assert recorder.counts == {("/crash", "GET", 5): 1}
    assert recorder.in_flight == 0


async def test_in_flight_is_counted_during_the_request() -> None:
    recorder = RequestMetrics()
    seen: list[int] = []
    async with client_for(tiny_app(recorder, seen)) as client:
        await asyncio.gather(*(client.get(f"/items/{i}") for i in range(3)))
    assert seen
    assert all(1 <= n <= 3 for n in seen)
    assert recorder.in_flight == 0


async def test_no_response_counts_as_499() -> None:
    recorder = RequestMetrics()

    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    middleware = MetricsMiddleware(silent, recorder)
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/x", "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    await middleware(scope, receive, send)
    assert recorder.counts == {(UNMATCHED_ROUTE, "GET", 4): 1}


async def test_non_http_scopes_pass_through_untouched() -> None:
    recorder = RequestMetrics()
    calls: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])

    middleware = MetricsMiddleware(inner, recorder)

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        return None

    await middleware({"type": "lifespan"}, receive, send)
    assert calls == ["lifespan"]
    assert recorder.counts == {}


def test_route_labels_are_capped() -> None:
    recorder = RequestMetrics(max_routes=3)
    for i in range(10):
        recorder.record(f"/r{i}", "GET", 200, 0.001)
    routes = {route for route, _m, _c in recorder.counts}
    assert routes == {"/r0", "/r1", "/r2", OTHER_ROUTE}
    assert recorder.counts[(OTHER_ROUTE, "GET", 2)] == 7


def test_metrics_middleware_follows_the_setting(tmp_path: Any) -> None:
    assert metrics_middleware(make_settings(tmp_path, metrics_enabled=False)) is None
    middleware = metrics_middleware(make_settings(tmp_path))
    assert middleware is not None
    assert middleware.cls is MetricsMiddleware


async def test_recorder_found_through_the_app_state() -> None:
    recorder = RequestMetrics()

    class Monitoring:
        def __init__(self) -> None:
            self.recorder = recorder

    class Resources:
        monitoring = Monitoring()

    async def item(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/x", item)])
    app.state.resources = Resources()
    app.add_middleware(MetricsMiddleware)
    async with client_for(app) as client:
        await client.get("/x")
    assert recorder.counts == {("/x", "GET", 2): 1}


# --- histogram and windows ---------------------------------------------------------------------
def test_bucket_bounds_and_prometheus_subset() -> None:
    assert bucket_of(0.0) == 0
    assert bucket_of(BOUNDS[10]) == 10  # upper bounds are inclusive, as Prometheus' `le`
    assert bucket_of(BOUNDS[10] * 1.0001) == 11
    assert bucket_of(1e6) == len(BOUNDS)
    bounds_ms = [round(b * 1000, 4) for _, b in PROMETHEUS_BOUNDS]
    assert bounds_ms[:6] == [0.0625, 0.125, 0.25, 0.5, 1, 2]


def test_percentiles_are_within_ten_percent() -> None:
    durations = [0.001 * (1 + i % 200) for i in range(2000)]  # 1..200 ms, uniform
    counts = [0] * (len(BOUNDS) + 1)
    for d in durations:
        counts[bucket_of(d)] += 1
    exact = sorted(durations)
    for q in (0.5, 0.95, 0.99):
        estimate = percentile(counts, q, max(durations))
        assert estimate is not None
        assert abs(estimate - exact[int(q * len(exact)) - 1]) / exact[int(q * len(exact)) - 1] < 0.1
    assert percentile([0] * 5, 0.5) is None


def test_windows_rates_errors_and_percentiles() -> None:
    clock = FakeClock(1_000_000.0)
    recorder = RequestMetrics(clock=clock)
    started = clock.now - 3600
    # 14 minutes ago: 100 slow requests, 10 of them 5xx.
    clock.now -= 14 * 60
    for i in range(100):
        recorder.record("/a", "GET", 500 if i < 10 else 200, 0.400)
    # 3 minutes ago: 50 requests, 5 of them 4xx.
    clock.now += 11 * 60
    for i in range(50):
        recorder.record("/b", "POST", 404 if i < 5 else 201, 0.020)
    # Now: 30 fast requests.
    clock.now += 3 * 60
    for _ in range(30):
        recorder.record("/a", "GET", 200, 0.002)

    merged = MergedMetrics([recorder.snapshot()], now=clock.now, since=started)
    m1, m5, m15 = merged.window(60), merged.window(300), merged.window(900)
    assert (m1.requests, m5.requests, m15.requests) == (30, 80, 180)
    assert m15.errors_5xx == 10
    assert m15.error_rate_5xx == round(10 / 180, 4)
    assert m5.errors_4xx == 5
    assert m5.errors_5xx == 0
    assert m1.p95_ms is not None
    assert 1.6 < m1.p95_ms <= 2.0
    assert m15.max_ms == 400.0
    # 1-minute window: between 55 and 60 s of a 5 s slot grid, never more than 60.
    assert 30 / 60 <= m1.rate_per_second <= round(30 / 55, 4)
    assert merged.window(60, "/b").requests == 0
    assert merged.window(300, "/b").requests == 50
    assert merged.total == 180
    assert merged.by_status_class() == {"2xx": 165, "4xx": 5, "5xx": 10}
    timeline = merged.timeline()
    assert len(timeline) == 180
    assert sum(p.requests for p in timeline) == 180
    assert timeline[-1].requests == 30


def test_rates_never_divide_by_time_before_the_start() -> None:
    clock = FakeClock(1_000_000.0)
    recorder = RequestMetrics(clock=clock)
    for _ in range(20):
        recorder.record("/a", "GET", 200, 0.001)
    merged = MergedMetrics([recorder.snapshot()], now=clock.now + 10, since=clock.now)
    assert merged.window(900).rate_per_second == 2.0


def test_snapshots_merge_exactly() -> None:
    clock = FakeClock()
    one, two = RequestMetrics(clock=clock), RequestMetrics(clock=clock)
    for _ in range(3):
        one.record("/a", "GET", 200, 0.010)
    for _ in range(5):
        two.record("/a", "GET", 200, 0.010)
    two.record("/b", "DELETE", 503, 0.5)
    merged = MergedMetrics([one.snapshot(), two.snapshot()], now=clock.now, since=clock.now - 60)
    assert merged.counts == {("/a", "GET", 2): 8, ("/b", "DELETE", 5): 1}
    assert sum(merged.routes["/a"].hist) == 8
    assert merged.window(60).requests == 9
    assert merged.window(60).errors_5xx == 1


def test_prometheus_exposition_of_merged_figures() -> None:
    from stalwart.monitoring.prometheus import render_metrics
    from stalwart.monitoring.service import Cluster

    clock = FakeClock()
    recorder = RequestMetrics(clock=clock)
    for d in (0.0005, 0.003, 0.003, 2.0):
        recorder.record("/items/{item_id}", "GET", 200, d)
    recorder.record(UNMATCHED_ROUTE, "GET", 404, 0.0001)
    snapshot = {"instance": "1-a", "started_at": clock.now - 5, "metrics": recorder.snapshot(),
                "process": {"rss_bytes": 1000, "cpu_percent": 1.0, "open_fds": 7, "threads": 2,
                            "loop_lag_max_ms": 3.0},
                "pool": {"in_use": 1, "idle": 2, "overflow": 0},
                "rate_limit": {"rejections": 4}}
    merged = MergedMetrics([snapshot["metrics"]], now=clock.now, since=clock.now - 5)
    cluster = Cluster(now=clock.now, snapshots=[snapshot], merged=merged, leader=True)
    text = render_metrics(cluster, service="svc", environment="test").decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        (s.labels["route"], s.labels["method"], s.labels["status_class"]): s.value
        for s in families["stalwart_http_requests"].samples
    }
    assert requests == {("/items/{item_id}", "GET", "2xx"): 4.0, ("<unmatched>", "GET", "4xx"): 1.0}
    buckets = {
        s.labels["le"]: s.value
        for s in families["stalwart_http_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["route"] == "/items/{item_id}"
    }
    assert buckets["0.001"] == 1.0
    assert buckets["0.004"] == 3.0
    assert buckets["1.024"] == 3.0
    assert buckets["+Inf"] == 4.0
    assert families["stalwart_rate_limit_rejections"].samples[0].value == 4.0
    lag = families["stalwart_event_loop_lag_max_seconds"].samples[0]
    assert lag.labels == {"instance": "1-a"}
    assert lag.value == pytest.approx(0.003)
