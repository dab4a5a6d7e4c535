"""`stalwart serve --workers 2`: /api/monitor and /metrics count the requests of both workers,
whichever worker answers (src/stalwart/monitoring/share.py, FolderShare)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.serving import ServerProcess

pytestmark = pytest.mark.e2e

TOKEN = "monitor-" + "w" * 32
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_two_workers_report_the_requests_of_both(tmp_path: Path) -> None:
    server = ServerProcess(
        tmp_path / "var",
        # STALWART_WORKERS is what `stalwart serve` starts when --workers is not given.
        env={"STALWART_MONITOR_TOKEN": TOKEN, "STALWART_METRICS_PUBLISH_SECONDS": "0.2", "STALWART_WORKERS": "2"},
    )
    assert server.run_cli("migrate").returncode == 0
    server.start(timeout=60)  # two worker processes start slowly on a busy machine
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until both workers are up and published
            r = httpx.get(f"{server.url}/api/monitor", headers=AUTH, timeout=5)
            if r.status_code == 200 and r.json()["sharing"]["instances"] == 2:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # the start-up probes of ServerProcess.start published by their worker

        def live_total() -> int:
            r = httpx.get(f"{server.url}/api/monitor", headers=AUTH, timeout=5)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["sharing"] == {"mode": "folder", "instances": 2}
            assert len({i["pid"] for i in body["instances"]}) == 2
            return {route["route"]: route["total"] for route in body["routes"]}["/health/live"]

        before = live_total()  # the start-up probes of ServerProcess.start
        # A new connection each time, so the kernel spreads them over both workers.
        for _ in range(40):
            assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200
        time.sleep(0.8)  # a publish interval (0.2 s) and a cache time (0.1 s), with margin
        for _ in range(6):  # whichever worker answers
            assert live_total() == before + 40
            text = httpx.get(f"{server.url}/metrics", headers=AUTH, timeout=5).text
            families = {f.name: f for f in text_string_to_metric_families(text)}
            counted = sum(
                s.value for s in families["stalwart_http_requests"].samples
                if s.name == "stalwart_http_requests_total" and s.labels["route"] == "/health/live"
            )
            assert counted == before + 40
    finally:
        server.stop()
    assert "Traceback" not in server.log()
