"""`stalwart audit URL` against real servers: Stalwart passes, a bare FastAPI app fails."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PostgresDatabase
from tests.e2e.serving import ServerProcess, free_port, production_env, stalwart_bin, tls_files

pytestmark = pytest.mark.e2e


def _audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [stalwart_bin(), "audit", *args], capture_output=True, text=True, timeout=120, check=False,
        env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"},
    )


def _rows(output: str) -> dict[str, str]:
    """check name -> outcome, from the report's table."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 3 and cells[1] in ("PASS", "FAIL", "not checked"):
            rows[cells[2]] = cells[1]
    return rows


def test_audit_passes_against_stalwart_in_production(tmp_path: Path, postgres_db: PostgresDatabase) -> None:
    _, certfile, keyfile = tls_files(tmp_path)
    server = ServerProcess(
        tmp_path / "var", env=production_env(postgres_db.url),
        args=("--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)), scheme="https",
    )
    assert server.run_cli("migrate").returncode == 0
    with server:
        # Nothing serves plain http on the probed port: HTTPS only.
        result = _audit(server.url, "--insecure", "--http-port", str(free_port()))
    assert result.returncode == 0, result.stdout
    assert "14 of 14 checks passed, 0 failed, 0 not checked" in result.stdout
    assert set(_rows(result.stdout).values()) == {"PASS"}


def test_audit_of_stalwart_over_plain_http_fails_only_https(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "var")
    assert server.run_cli("migrate").returncode == 0
    with server:
        result = _audit(server.url)
    assert result.returncode == 1
    rows = _rows(result.stdout)
    assert {name for name, outcome in rows.items() if outcome != "PASS"} == {"HTTPS only", "HSTS"}
    assert rows["HTTPS only"] == "FAIL"
    assert rows["HSTS"] == "not checked"


BARE_APP = """
from fastapi import FastAPI
from pydantic import BaseModel
app = FastAPI()
class Thing(BaseModel):
    name: str
@app.get("/")
def root():
    return {"hello": "world"}
@app.post("/things")
def create(thing: Thing):
    return thing
@app.get("/things/{name}")
def read(name: str):
    return {"a": 1}[name]  # a 500 for any other name
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
        result = _audit(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert result.returncode == 1
    rows = _rows(result.stdout)
    failing = {name for name, outcome in rows.items() if outcome == "FAIL"}
    assert failing == {
        "HTTPS only", "health", "monitor protected", "body limit", "rate limit", "error documents",
        "no internals in errors", "security headers", "no server banner", "CSP",
    }
    assert rows["OpenAPI"] == rows["malformed input"] == rows["CORS"] == "PASS"
    assert rows["HSTS"] == "not checked"
