"""The Swagger UI page (/docs) in headless Chromium against a real server: it renders every
operation of the OpenAPI 3.1 document under the strict CSP, with no console error."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.serving import ServerProcess

pytestmark = pytest.mark.e2e


def test_docs_page_renders_the_api_under_the_strict_csp(tmp_path: Path, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    driver: WebDriver = browser  # type: ignore[assignment]
    server = ServerProcess(tmp_path / "var")
    assert server.run_cli("migrate").returncode == 0
    with server:
        spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
        assert spec["openapi"].startswith("3.1")
        operations = sum(len(methods) for methods in spec["paths"].values())
        driver.get(f"{server.url}/docs")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
        rendered = driver.find_elements(By.CSS_SELECTOR, ".opblock")
        assert len(rendered) == operations
        summaries = {e.text for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert "/api/v1/notes" in summaries
        # Swagger UI's own error box ("Unable to render this definition") is absent.
        assert driver.find_elements(By.CSS_SELECTOR, ".errors-wrapper") == []
        page = driver.find_element(By.TAG_NAME, "body").text
        assert "Unable to render this definition" not in page
        console = [e["message"] for e in driver.get_log("browser")]  # type: ignore[attr-defined]
        assert console == [], console  # no CSP violation, no failed load, no script error
