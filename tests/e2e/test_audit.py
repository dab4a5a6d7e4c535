"""`stalwart audit URL` passes on Stalwart and fails, check by check, on a bare app."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.serving import ServerProcess, free_port, stalwart_bin

pytestmark = pytest.mark.e2e


def test_audit_passes_against_stalwart(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "var")
    assert server.run_cli("migrate").returncode == 0
    with server:
        result = subprocess.run(
            [stalwart_bin(), "audit", server.url], capture_output=True, text=True, timeout=60,
            check=False, env={**server.env, "COLUMNS": "200"},
        )
    assert result.returncode == 0, result.stdout
    assert "13 of 13 checks passed" in result.stdout


BARE_APP = """
from fastapi import FastAPI
app = FastAPI()
@app.get("/")
def root():
    return {"hello": "world"}
"""


def test_audit_fails_a_bare_fastapi_app(tmp_path: Path) -> None:
    (tmp_path / "bare.py").write_text(BARE_APP)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bare:app", "--port", str(port), "--host", "127.0.0.1",
         "--log-level", "warning"],
        cwd=tmp_path,
    )
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        result = subprocess.run(
            [stalwart_bin(), "audit", f"http://127.0.0.1:{port}"], capture_output=True, text=True,
            timeout=60, check=False, env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"},
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert result.returncode == 1
    failing = {line.split("│")[2].strip() for line in result.stdout.splitlines() if "FAIL" in line}
    assert {"security headers", "no server banner", "problem+json errors", "request id",
            "rate limit", "health", "body limit"} <= failing
