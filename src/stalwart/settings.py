"""The one settings object. Nothing else in the package reads the environment."""

from __future__ import annotations

import os
import tempfile
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "DEFAULT_SECRET_KEY",
    "Environment",
    "Settings",
    "export_workers",
    "invalid_settings",
    "production_problems",
]

# A development default so `make run` works out of the box; production refuses it.
DEFAULT_SECRET_KEY = "dev-insecure-secret-key-change-me"  # noqa: S105


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


def _split(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every setting, read from `STALWART_*` environment variables and an optional `.env`."""

    model_config = SettingsConfigDict(
        env_prefix="STALWART_", env_file=".env", extra="ignore", frozen=True
    )

    # --- environment -------------------------------------------------------------------------
    env: Environment = Environment.development
    debug: bool = False
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    service_id: str = "stalwart"
    release_id: str = ""

    # --- data --------------------------------------------------------------------------------
    data_dir: Path = Path("./var")
    database_url: str = ""  # empty: SQLite file `stalwart.db` under data_dir
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout: float = Field(default=5.0, gt=0)
    db_pool_recycle: int = Field(default=1800, ge=-1)
    db_statement_timeout_ms: int = Field(default=10_000, ge=0)
    redis_url: str = ""
    redis_timeout: float = Field(default=0.5, gt=0)

    # --- security: headers, https, proxies, cors ---------------------------------------------
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cors_allow_credentials: bool = True
    cors_max_age: int = 600
    cors_allow_methods: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    )
    cors_allow_headers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["Authorization", "Content-Type", "If-Match", "If-None-Match",
                                 "Idempotency-Key", "X-Request-ID"]
    )
    cors_expose_headers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ETag", "Location", "RateLimit", "RateLimit-Policy",
                                 "Retry-After", "X-Request-ID"]
    )
    # The header family the proxy in front rewrites; the other one is never read.
    proxy_headers: Literal["x-forwarded", "forwarded"] = "x-forwarded"
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list
    )
    https_redirect: bool | None = None  # None: on in production only
    hsts_max_age: int = 31_536_000
    hsts_include_subdomains: bool = True
    hsts_preload: bool = False
    # Header overrides: "Name: value" to set, "Name:" (empty value) to remove.
    security_headers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    permissions_policy: str = (
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
        "microphone=(), payment=(), usb=(), interest-cohort=()"
    )

    # --- rate limiting -----------------------------------------------------------------------
    rate_limit: str = "100/15minutes"
    rate_limit_login: str = "10/15minutes"
    rate_limit_login_account: str = "5/15minutes"
    # Operators' monitoring (dashboard polling, Prometheus scrapes) gets its own budget so it
    # neither spends nor is stopped by the default per-IP one.
    rate_limit_monitoring: str = "1200/15minutes"
    rate_limit_backend: Literal["auto", "memory", "redis"] = "auto"
    rate_limit_ipv6_prefix: int = Field(default=56, ge=1, le=128)
    rate_limit_fail_open: bool = True
    rate_limit_key_prefix: str = "stalwart:rl:"  # Redis keys; distinct per deployment sharing a Redis
    # Redis backend: a process takes limit // N of a budget per call and decides those hits
    # itself (policies/rate_limit/redis.py); budgets under N stay exact. 0: every hit asks Redis.
    rate_limit_lease_divisor: int = Field(default=1024, ge=0)

    # --- input limits --------------------------------------------------------------------------
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    max_json_depth: int = Field(default=32, ge=1)

    # --- logging -------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    log_anonymize_ip: bool | None = None  # None: on in production only
    access_log: bool = True

    # --- monitoring ----------------------------------------------------------------------------
    monitor_token: SecretStr | None = None
    metrics_enabled: bool = True
    # FastAPI's native OpenTelemetry spans, metrics and logs. They need an OpenTelemetry SDK set up
    # in the process (`opentelemetry-instrument`, not a Stalwart dependency). Off by default: the
    # service has its own metrics and access log, and FastAPI would otherwise look the providers
    # up (three environment reads) on every request, about 7 us each.
    opentelemetry: bool = False
    health_cache_seconds: float = Field(default=1.0, ge=0)
    health_check_timeout: float = Field(default=1.0, gt=0)
    health_min_free_disk_mb: int = 200
    memory_limit_mb: int = 1024
    alert_rss_mb: int = 768
    alert_5xx_rate: float = 0.05
    alert_p95_ms: float = 500.0
    alert_loop_lag_ms: float = 250.0
    # Rate and latency alerts wait for this many requests in their 1-minute window.
    alert_min_requests: int = Field(default=20, ge=1)
    alert_eval_seconds: float = Field(default=5.0, gt=0)
    monitor_sample_seconds: float = Field(default=1.0, gt=0)
    # How workers and instances share their figures: "auto" is Redis when redis_url is set,
    # else a folder (metrics_dir, default data_dir/metrics) on this host; "off": this process only.
    metrics_share: Literal["auto", "redis", "folder", "off"] = "auto"
    metrics_dir: Path | None = None
    metrics_key_prefix: str = "stalwart:metrics:"
    metrics_publish_seconds: float = Field(default=2.0, gt=0)
    metrics_stale_seconds: float = Field(default=10.0, gt=0)
    # One "performance" log line (stalwart.metrics logger) per interval for the service; 0: off.
    metrics_log_seconds: float = Field(default=60.0, ge=0)

    # --- deployment ----------------------------------------------------------------------------
    # Worker processes of this instance: set for them by `stalwart serve --workers N`. Without
    # Redis they share no rate-limit budget or note cache, so each admits 1/N of every budget
    # and the note cache is off (see budget_divisor).
    workers: int = Field(default=1, ge=1)
    shutdown_drain_seconds: float = Field(default=0.0, ge=0)
    shutdown_timeout_seconds: float = Field(default=30.0, gt=0)
    static_dir: Path | None = None  # None: the packaged static folder
    compression_min_size: int = 500
    # Server-side cache of note reads: Redis when redis_url is set, else in-process (one
    # instance only: several instances without Redis must set cache_ttl_seconds=0).
    cache_ttl_seconds: float = Field(default=30.0, ge=0)
    cache_max_entries: int = Field(default=10_000, ge=1)  # accounts kept by the in-process LRU
    cache_key_prefix: str = "stalwart:cache:"

    # --- data lifecycle ------------------------------------------------------------------------
    backup_dir: Path | None = None  # None: data_dir / "backups"
    backup_keep: int = Field(default=7, ge=1)
    backup_encryption_key: SecretStr | None = None
    backup_interval_hours: float = 0.0  # 0: no scheduled backups
    retention_trash_days: int = 30
    retention_tokens_days: int = 7
    retention_inactive_accounts_days: int = 365
    retention_audit_days: int = 365
    retention_backups_days: int = 30
    purge_interval_hours: float = 24.0  # 0: no scheduled purge
    token_ttl_hours: int = Field(default=24 * 30, ge=1)
    backup_verify: bool = True  # restore each new archive into a scratch database
    # Kept apart from the database and its backups; None: data_dir / "erasures" / "ledger.jsonl".
    erasure_ledger_path: Path | None = None
    # Who may run a scheduled job: auto = PostgreSQL advisory lock, else a file lock in data_dir.
    scheduler_lock: Literal["auto", "postgres", "redis", "file"] = "auto"
    scheduler_lock_prefix: str = "stalwart:lock:"  # Redis keys, distinct per deployment
    scheduler_start_delay_seconds: float = Field(default=300.0, ge=0)

    # --- authentication ------------------------------------------------------------------------
    # argon2id cost; the defaults are argon2-cffi's RFC 9106 "low memory" profile.
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65_536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)

    @field_validator(
        "cors_origins",
        "cors_allow_methods",
        "cors_allow_headers",
        "cors_expose_headers",
        "security_headers",
        mode="before",
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return _split(value)

    @field_validator("backup_encryption_key", mode="before")
    @classmethod
    def _backup_key(cls, value: object) -> object:
        # scrypt stretches the key, but a short one is still guessable offline from an archive.
        if value == "":
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and len(text) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        items = _split(value)
        if isinstance(items, list):
            return [ip_network(str(item), strict=False) for item in items]
        return items

    # --- derived values ----------------------------------------------------------------------
    @property
    def is_production(self) -> bool:
        return self.env is Environment.production

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'stalwart.db').resolve()}"

    @property
    def effective_backup_dir(self) -> Path:
        return self.backup_dir if self.backup_dir is not None else self.data_dir / "backups"

    @property
    def effective_https_redirect(self) -> bool:
        return self.is_production if self.https_redirect is None else self.https_redirect

    @property
    def effective_anonymize_ip(self) -> bool:
        return self.is_production if self.log_anonymize_ip is None else self.log_anonymize_ip

    @property
    def rate_limits_shared(self) -> bool:
        """Whether every worker and instance counts against the same budgets (Redis)."""
        if self.rate_limit_backend == "auto":
            return bool(self.redis_url)
        return self.rate_limit_backend == "redis"

    @property
    def budget_divisor(self) -> int:
        """Each budget is split between the workers that cannot share it (1: not split)."""
        return 1 if self.rate_limits_shared else self.workers


def invalid_settings(exc: ValidationError) -> list[str]:
    """One line per bad setting, named as its variable, without the value (it may be a secret)."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        name = "STALWART_" + "_".join(str(part) for part in error["loc"][:1]).upper()
        lines.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return lines


def export_workers(workers: int) -> None:
    """Tell the worker processes about to be started how many they are (`Settings.workers`).

    They read their settings from the environment they inherit, as `stalwart serve` reads its
    own; the app factory they run takes no arguments.
    """
    os.environ["STALWART_WORKERS"] = str(workers)


def production_problems(settings: Settings) -> list[str]:
    """Each reason the configuration is unsafe for production, one line each (empty: safe)."""
    if not settings.is_production:
        return []
    problems: list[str] = []
    secret = settings.secret_key.get_secret_value()
    if not secret or secret == DEFAULT_SECRET_KEY:
        problems.append("STALWART_SECRET_KEY is unset or the development default; set a random one")
    elif len(secret) < 32:
        problems.append("STALWART_SECRET_KEY is shorter than 32 characters")
    if settings.debug:
        problems.append("STALWART_DEBUG is on; debug must be off in production")
    if not settings.cors_origins:
        problems.append("STALWART_CORS_ORIGINS is empty; list the exact production origins")
    for origin in settings.cors_origins:
        if "*" in origin:
            problems.append(f"STALWART_CORS_ORIGINS has a wildcard ({origin}); list exact origins")
        elif not origin.startswith("https://"):
            problems.append(f"STALWART_CORS_ORIGINS has a non-HTTPS origin ({origin})")
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        db_path = url.split(":///", 1)[-1]
        tmp = Path(tempfile.gettempdir()).resolve()
        if db_path in ("", ":memory:") or "mode=memory" in url:
            problems.append("STALWART_DATABASE_URL is an in-memory SQLite database")
        elif Path(db_path).resolve().is_relative_to(tmp) or db_path.startswith("/tmp/"):  # noqa: S108
            problems.append(f"STALWART_DATABASE_URL points into a temporary folder ({tmp})")
    if settings.argon2_memory_kib < 19_456 or settings.argon2_time_cost < 2:
        problems.append("STALWART_ARGON2_* cost is below OWASP's minimum (m=19456 KiB, t=2)")
    if settings.log_level == "DEBUG":
        problems.append("STALWART_LOG_LEVEL is DEBUG; use INFO or above in production")
    if settings.https_redirect is False:
        problems.append("STALWART_HTTPS_REDIRECT is off; production serves HTTPS only")
    if settings.monitor_token is not None and len(settings.monitor_token.get_secret_value()) < 24:
        problems.append("STALWART_MONITOR_TOKEN is shorter than 24 characters")
    return problems
