"""The monitor dashboard in headless Chromium against a real server: it works under the strict
CSP, takes a token, draws live charts from /api/monitor (src/stalwart/static/monitor/), and
leaves a screenshot in docs/monitor-dashboard.png."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.serving import ServerProcess

pytestmark = pytest.mark.e2e

TOKEN = "monitor-" + "d" * 32
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "monitor-dashboard.png"
CHARTS = ("chart-rate", "chart-p95", "chart-errors", "chart-memory")


def _traffic(url: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=5) as client:
        i = 0
        while not stop.is_set() and i < 2000:
            client.get("/health/live")
            if i % 3 == 0:
                client.get("/api/v1/notes")  # 401
            if i % 7 == 0:
                client.get(f"/no-such-page/{i}")  # 404
            if i % 5 == 0:
                client.get("/health")
            i += 1
            time.sleep(0.01)


def test_dashboard_draws_live_charts_under_the_strict_csp(
    tmp_path: Path, browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    # The traffic below is far over the default per-client budget (100 per 15 minutes).
    env = {"STALWART_MONITOR_TOKEN": TOKEN, "STALWART_RATE_LIMIT": "100000/15minutes"}
    server = ServerProcess(tmp_path / "var", env=env)
    assert server.run_cli("migrate").returncode == 0
    server.start(timeout=60)
    try:
        page = httpx.get(f"{server.url}/monitor", timeout=5)
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";", 1)[0]
        assert "<script>" not in page.text
        assert " style=" not in page.text

        stop = threading.Event()
        worker = threading.Thread(target=_traffic, args=(server.url, stop), daemon=True)
        worker.start()
        try:
            time.sleep(11)  # a few 5-second slots of traffic for the charts
            driver.get(f"{server.url}/monitor")
            token = driver.find_element(By.ID, "token")
            token.send_keys(TOKEN)
            driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
            WebDriverWait(driver, 20).until(
                lambda d: d.execute_script("return window.stalwartMonitor.updates") >= 1
            )
        finally:
            stop.set()
            worker.join(timeout=10)

        state = driver.execute_script("return window.stalwartMonitor")
        assert state["errors"] == 0, state
        assert state["points"]["rate"] >= 2
        assert state["points"]["p95"] >= 2
        assert state["points"]["errors"] >= 2
        assert state["points"]["memory"] >= 1
        for chart in CHARTS:
            points = driver.find_element(By.ID, chart).get_attribute("data-points")
            assert points is not None
            assert int(points) > 0, chart
            painted = driver.execute_script(
                """const c = document.getElementById(arguments[0]);
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; }
                   return n;""",
                chart,
            )
            assert painted > 500, chart
        alerts = driver.find_elements(By.CSS_SELECTOR, "#alerts tr")
        assert len(alerts) == 5
        routes = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#routes tr td:first-child")]
        assert "/health/live" in routes
        assert "/api/v1/notes" in routes
        assert "<unmatched>" in routes
        assert not any("/no-such-page/" in r for r in routes)
        assert driver.execute_script("return sessionStorage.getItem('stalwart.monitorToken')") == TOKEN
        assert driver.find_element(By.ID, "login").get_attribute("hidden") is not None

        console = [e["message"] for e in driver.get_log("browser")]  # type: ignore[attr-defined]
        assert console == [], console  # no CSP violation, no failed load, no script error

        SCREENSHOT.parent.mkdir(exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
        assert SCREENSHOT.stat().st_size > 10_000

        # A wrong token shows the form again, with the reason.
        driver.find_element(By.ID, "sign-out").click()
        driver.find_element(By.ID, "token").send_keys("wrong-token")
        driver.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        WebDriverWait(driver, 10).until(
            lambda d: "not valid" in d.find_element(By.ID, "status").text
        )
        assert driver.execute_script("return sessionStorage.getItem('stalwart.monitorToken')") is None
    finally:
        server.stop()
