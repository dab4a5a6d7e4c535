"""Production refuses to start on an unsafe configuration, one clear line per problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from stalwart.app import UnsafeConfiguration, create_app
from stalwart.settings import Settings, invalid_settings, production_problems

SAFE: dict[str, Any] = {
    "env": "production",
    "secret_key": "s" * 48,
    "cors_origins": "https://app.example.com",
    "database_url": "postgresql+asyncpg://app@db.internal/app",
}


def _settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **{**SAFE, **overrides})  # type: ignore[call-arg]


def test_safe_production_configuration_has_no_problems() -> None:
    assert production_problems(_settings()) == []
    create_app(_settings())  # does not raise


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"secret_key": ""}, "STALWART_SECRET_KEY is unset or the development default"),
        (
            {"secret_key": "dev-insecure-secret-key-change-me"},
            "STALWART_SECRET_KEY is unset or the development default",
        ),
        ({"secret_key": "short"}, "STALWART_SECRET_KEY is shorter than 32 characters"),
        ({"debug": True}, "STALWART_DEBUG is on"),
        ({"cors_origins": ""}, "STALWART_CORS_ORIGINS is empty"),
        ({"cors_origins": "*"}, "STALWART_CORS_ORIGINS has a wildcard (*)"),
        ({"cors_origins": "https://*.example.com"}, "STALWART_CORS_ORIGINS has a wildcard"),
        ({"cors_origins": "http://app.example.com"}, "STALWART_CORS_ORIGINS has a non-HTTPS origin"),
        ({"database_url": "sqlite+aiosqlite:////tmp/app.db"}, "points into a temporary folder"),
        ({"database_url": "sqlite+aiosqlite:///:memory:"}, "in-memory SQLite"),
        ({"log_level": "DEBUG"}, "STALWART_LOG_LEVEL is DEBUG"),
        ({"https_redirect": False}, "STALWART_HTTPS_REDIRECT is off"),
        ({"argon2_memory_kib": 64}, "below OWASP's minimum"),
    ],
)
def test_each_unsafe_setting_refuses_start(overrides: dict[str, Any], message: str) -> None:
    settings = _settings(**overrides)
    problems = production_problems(settings)
    assert len(problems) == 1
    assert message in problems[0]
    with pytest.raises(UnsafeConfiguration) as info:
        create_app(settings)
    assert info.value.problems == problems


def test_several_problems_are_all_named() -> None:
    problems = production_problems(_settings(secret_key="", debug=True, cors_origins=""))
    assert len(problems) == 3


def test_development_is_not_checked(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, env="development", data_dir=tmp_path)  # type: ignore[call-arg]
    assert production_problems(settings) == []


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STALWART_ENV", "production")
    monkeypatch.setenv("STALWART_CORS_ORIGINS", "https://a.example.com, https://b.example.com")
    monkeypatch.setenv("STALWART_TRUSTED_PROXIES", "10.0.0.0/8,::1")
    monkeypatch.setenv("STALWART_RATE_LIMIT", "50/minute")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.is_production
    assert s.cors_origins == ["https://a.example.com", "https://b.example.com"]
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    assert s.rate_limit == "50/minute"


def test_a_short_backup_key_is_refused_and_never_echoed(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from stalwart.settings import invalid_settings

    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, data_dir=tmp_path, backup_encryption_key="short-secret-value", workers=0)  # type: ignore[call-arg]
    assert sorted(invalid_settings(refused.value)) == [
        "STALWART_BACKUP_ENCRYPTION_KEY: must be at least 32 characters",
        "STALWART_WORKERS: Input should be greater than or equal to 1",
    ]
    assert Settings(_env_file=None, data_dir=tmp_path, backup_encryption_key="").backup_encryption_key is None  # type: ignore[call-arg]


def test_cli_configuration_errors_name_the_variable_not_the_value(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stalwart.cli import app

    env = {"STALWART_DATA_DIR": str(tmp_path), "STALWART_BACKUP_ENCRYPTION_KEY": "short-secret-value"}
    result = CliRunner().invoke(app, ["check-config"], env=env)
    assert result.exit_code == 2
    assert result.stderr == "invalid configuration: STALWART_BACKUP_ENCRYPTION_KEY: must be at least 32 characters\n"


@pytest.mark.parametrize(
    "name", ["DATA_DIR", "STATIC_DIR", "BACKUP_DIR", "METRICS_DIR", "ERASURE_LEDGER_PATH", "MONITOR_TOKEN"]
)
def test_an_empty_path_or_monitor_token_counts_as_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """An empty path was the working directory (`STALWART_STATIC_DIR=` served the checkout and
    its SQLite database at /static); an empty monitor token stopped a production start."""
    monkeypatch.setenv(f"STALWART_{name}", "")
    unset = Settings(_env_file=None)  # type: ignore[call-arg]
    field = name.lower()
    assert getattr(unset, field) == Settings.model_fields[field].get_default(call_default_factory=True)
    assert getattr(unset, field) != Path()
    monkeypatch.setenv("STALWART_ENV", "production")
    assert production_problems(Settings(_env_file=None, **SAFE)) == []  # type: ignore[call-arg]


@pytest.mark.anyio
async def test_an_empty_static_dir_does_not_serve_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import httpx

    (tmp_path / "private.txt").write_text("not for the web")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STALWART_STATIC_DIR", "")
    app = create_app(Settings(_env_file=None, env="test", data_dir=tmp_path / "data"))  # type: ignore[call-arg]
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        response = await client.get("/static/private.txt")
    assert response.status_code == 404
    assert "not for the web" not in response.text


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"scheduler_lock": "redis"}, "STALWART_SCHEDULER_LOCK: redis needs STALWART_REDIS_URL"),
        ({"scheduler_lock": "postgres"}, "STALWART_SCHEDULER_LOCK: postgres needs a PostgreSQL STALWART_DATABASE_URL"),
        ({"rate_limit_backend": "redis"}, "STALWART_RATE_LIMIT_BACKEND: redis needs STALWART_REDIS_URL"),
    ],
)
def test_a_backend_without_its_service_is_refused_when_read(overrides: dict[str, Any], line: str) -> None:
    """Not at the first scheduled job, hours after a start that looked fine."""
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, env="development", **overrides)  # type: ignore[call-arg]
    assert invalid_settings(caught.value) == [line]
    assert Settings(_env_file=None, env="development", redis_url="redis://127.0.0.1:6379/0",  # type: ignore[call-arg]
                    database_url="postgresql+asyncpg://u@h/db", **overrides)


@pytest.mark.parametrize(
    "field",
    [
        "backup_interval_hours", "purge_interval_hours", "retention_trash_days", "retention_tokens_days",
        "retention_inactive_accounts_days", "retention_audit_days", "retention_backups_days",
    ],
)
def test_a_negative_period_is_refused_not_read_as_off(field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, **{field: -1})  # type: ignore[call-arg]
    assert invalid_settings(caught.value) == [f"STALWART_{field.upper()}: Input should be greater than or equal to 0"]
    assert getattr(Settings(_env_file=None, **{field: 0}), field) == 0  # type: ignore[call-arg]
