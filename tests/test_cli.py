"""The operator CLI: migrate (up and down), check-config, create-admin."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stalwart.cli import app
from stalwart.data.migrate import current_revision
from stalwart.settings import Settings

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


def _login(env: dict[str, str], tmp_path: Path, email: str, password: str) -> tuple[str, str] | None:
    """(role, display name) of the account if `password` is its password, else None."""
    import asyncio

    from sqlalchemy import select

    from stalwart.credentials import Passwords
    from stalwart.data.engine import Database
    from stalwart.data.models import Account

    settings = Settings(_env_file=None, **{k.removeprefix("STALWART_").lower(): v for k, v in env.items()})  # type: ignore[call-arg]

    async def check() -> tuple[str, str] | None:
        db = Database(settings)
        await db.start()
        try:
            async with db.session() as session:
                account = await session.scalar(select(Account).where(Account.email == email))
                assert account is not None
                ok = await Passwords(settings).verify(account.password_hash, password)
                return (account.role, account.display_name) if ok else None
        finally:
            await db.close()

    return asyncio.run(check())


def test_create_admin_asks_for_a_password_then_promotes_without_one(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert runner.invoke(app, ["migrate"], env=env).exit_code == 0
    result = runner.invoke(app, ["create-admin", "--email", "ops@example.com"], input="a long password\n" * 2, env=env)
    assert result.exit_code == 0, result.output
    assert "created admin" in result.stdout
    assert _login(env, tmp_path, "ops@example.com", "a long password") == ("admin", "Administrator")
    # Promoting (here an admin again) asks nothing and changes neither password nor name.
    args = ["create-admin", "--email", "ops@example.com", "--display-name", "Other", "--password", "another password"]
    result = runner.invoke(app, args, input="", env=env)
    assert result.exit_code == 0, result.output
    assert "promoted admin" in result.stdout
    assert result.stderr.strip() == "note: promoted only; the account keeps its password and display name"
    assert _login(env, tmp_path, "ops@example.com", "a long password") == ("admin", "Administrator")
    assert _login(env, tmp_path, "ops@example.com", "another password") is None


def test_create_admin_rejects_weak_password(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert runner.invoke(app, ["migrate"], env=env).exit_code == 0
    args = ["create-admin", "--email", "ops@example.com", "--display-name", "Ops"]
    result = runner.invoke(app, args, input="short\nshort\n", env=env)
    assert result.exit_code == 1
    assert "invalid password" in result.output


def test_create_admin_rejects_a_bad_email_before_asking_anything(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert runner.invoke(app, ["migrate"], env=env).exit_code == 0
    result = runner.invoke(app, ["create-admin", "--email", "not-an-email"], input="", env=env)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: invalid email"


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


def test_an_unreachable_database_is_one_line_not_a_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stalwart.cli import main
    from tests.e2e.serving import free_port

    for name, value in _env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("STALWART_DATABASE_URL", f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x")
    monkeypatch.setattr(sys, "argv", ["stalwart", "purge"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        "error: a service the command needs cannot be used (ConnectionRefusedError);"
        " check STALWART_DATABASE_URL and STALWART_REDIS_URL\n"
    )


def test_migrate_to_an_unknown_revision_and_build_static_of_no_folder_are_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path)
    result = runner.invoke(app, ["migrate", "--to", "bogus"], env=env)
    assert (result.exit_code, result.stderr) == (
        1, "error: no revision 'bogus'; see `stalwart migrate --help` and CHANGELOG.md\n"
    )
    result = runner.invoke(app, ["build-static", str(tmp_path / "none")], env=env)
    assert (result.exit_code, result.stderr) == (1, f"error: {tmp_path / 'none'} is not a folder\n")


def test_serve_refuses_more_workers_than_a_budget_without_shared_counters(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "STALWART_RATE_LIMIT_LOGIN_ACCOUNT": "5/15minutes", "STALWART_RATE_LIMIT_BACKEND": "auto"}
    result = runner.invoke(app, ["serve", "--workers", "6"], env=env)
    assert result.exit_code == 1
    assert result.stderr == (
        "unsafe: STALWART_RATE_LIMIT_LOGIN_ACCOUNT (5/15minutes) cannot be split between 6 workers that share"
        " no counters: set STALWART_REDIS_URL (with the auto or redis backend), or run fewer workers\n"
    )


def test_only_connection_failures_are_cut_to_one_line() -> None:
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from stalwart.cli import _connection_failure

    def wrapped(cause: BaseException) -> OperationalError:
        try:
            raise OperationalError("statement", {}, cause) from cause
        except OperationalError as exc:
            return exc

    refused = ConnectionRefusedError(111, "Connect call failed")
    assert _connection_failure(wrapped(refused)) is refused
    missing = sqlite3.OperationalError("unable to open database file")
    assert _connection_failure(wrapped(missing)) is missing
    # A statement the database refused keeps its message and trace.
    assert _connection_failure(wrapped(sqlite3.OperationalError("table accounts already exists"))) is None
    assert _connection_failure(BrokenPipeError()) is None
    every_address = OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 5999, 0, 0), ...")
    assert _connection_failure(wrapped(every_address)) is every_address
