"""The operator CLI: migrate (up and down), check-config, create-admin."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stalwart.cli import app
from stalwart.data.migrate import current_revision

runner = CliRunner()


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "STALWART_ENV": "test",
        "STALWART_DATA_DIR": str(tmp_path),
        "STALWART_ARGON2_TIME_COST": "1",
        "STALWART_ARGON2_MEMORY_KIB": "64",
        "STALWART_ARGON2_PARALLELISM": "1",
    }


def test_migrate_up_and_down(tmp_path: Path) -> None:
    env = _env(tmp_path)
    url = f"sqlite+aiosqlite:///{(tmp_path / 'stalwart.db').resolve()}"
    result = runner.invoke(app, ["migrate"], env=env)
    assert result.exit_code == 0, result.output
    assert "database at revision 0003" in result.output
    result = runner.invoke(app, ["migrate", "--to", "0001"], env=env)
    assert result.exit_code == 0, result.output
    assert current_revision(url) == "0001"
    result = runner.invoke(app, ["migrate", "--to", "base"], env=env)
    assert result.exit_code == 0
    assert current_revision(url) is None


def test_check_config_ok_in_development(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check-config"], env=_env(tmp_path))
    assert result.exit_code == 0
    assert "configuration ok for test" in result.output


def test_create_admin_then_promote(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert runner.invoke(app, ["migrate"], env=env).exit_code == 0
    args = ["create-admin", "--email", "ops@example.com", "--display-name", "Ops"]
    result = runner.invoke(app, args, input="a long password\na long password\n", env=env)
    assert result.exit_code == 0, result.output
    assert "created admin" in result.output
    result = runner.invoke(app, args, input="a long password\na long password\n", env=env)
    assert "promoted admin" in result.output


def test_create_admin_rejects_weak_password(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert runner.invoke(app, ["migrate"], env=env).exit_code == 0
    args = ["create-admin", "--email", "ops@example.com", "--display-name", "Ops"]
    result = runner.invoke(app, args, input="short\nshort\n", env=env)
    assert result.exit_code == 1
    assert "invalid password" in result.output


def test_audit_prints_what_the_server_sent_as_text_and_exits_1_on_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import stalwart.audit

    findings = [
        stalwart.audit.Finding("no server banner", "Helmet", stalwart.audit.Outcome.FAIL, "Server: edge[/] [beta]"),
        stalwart.audit.Finding("HSTS", "HSTS", stalwart.audit.Outcome.NOT_CHECKED, "no HTTPS answer"),
        stalwart.audit.Finding("OpenAPI", "OpenAPI", stalwart.audit.Outcome.PASS, "OpenAPI 3.1.0, 1 paths"),
    ]
    monkeypatch.setattr(stalwart.audit, "run_audit", lambda *a, **k: findings)
    result = runner.invoke(app, ["audit", "https://api.example.com"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "Server: edge[/] [beta]" in result.stdout  # Rich markup would drop or choke on it
    assert "1 of 3 checks passed, 1 failed, 1 not checked" in result.stdout


def test_audit_that_cannot_run_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["audit", "http://[::1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: 'http://[::1' is not a URL"
    assert result.stdout == ""
