"""The one settings object. Nothing else in the package reads the environment."""

from __future__ import annotations

import os
import tempfile
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
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
    """Every setting, read from `STALWART_*` environment variables and an optional `.env`.

    Each field's docstring is its description (`use_attribute_docstrings`): the meaning column
    of docs/configuration.md, which `tests/test_settings_reference.py` requires for every field.
    """

    model_config = SettingsConfigDict(
        env_prefix="STALWART_", env_file=".env", extra="ignore", frozen=True,
        use_attribute_docstrings=True,
    )

    # --- environment -------------------------------------------------------------------------
    env: Environment = Environment.development
    """`production` turns on the start-up safety checks and, by default, the HTTPS redirect and
    IP anonymization; it also sends HSTS over HTTPS only, logs exceptions without stack traces
    and drops the localhost CORS allowance (`development` and `test` behave alike)."""
    debug: bool = False
    """Add the Python traceback to 500 problem responses; ignored in production, which refuses
    to start with it on."""
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    """HMAC key of the erasure ledger's email hashes and of erased accounts' audit pseudonyms;
    keep it stable and the same on every instance; production refuses the development default
    and anything shorter than 32 characters."""
    service_id: str = "stalwart"
    """Name of the service in health reports (`serviceId`), `/metrics` and `/api/monitor`,
    PostgreSQL's `application_name` (`-reads` added for the read pool) and the Redis keys of
    the metrics share."""
    release_id: str = ""
    """Release reported as `releaseId` by the health endpoint and in `/api/monitor`; empty: the
    package version."""

    # --- data --------------------------------------------------------------------------------
    data_dir: Path = Path("./var")
    """Folder (relative to the working directory) of the default SQLite database, backups,
    erasure ledger, metrics folder share and job lock files; the readiness disk check measures
    its free space."""
    database_url: str = ""
    """SQLAlchemy async URL of the database (e.g. `postgresql+asyncpg://user:password@host/db`;
    backups support SQLite and PostgreSQL); empty: the SQLite file `<data_dir>/stalwart.db`."""
    db_pool_size: int = Field(default=10, ge=1)
    """Connections kept in each process's write pool; on PostgreSQL also the maximum of its
    separate read pool."""
    db_max_overflow: int = Field(default=10, ge=0)
    """Connections the write pool may open beyond `db_pool_size` under load (closed again when
    returned)."""
    db_pool_timeout: float = Field(default=5.0, gt=0)
    """Seconds a request waits for a pooled connection before it gets a 503; on PostgreSQL also
    the timeout for opening a connection."""
    db_pool_recycle: int = Field(default=1800, ge=-1)
    """Seconds after which a write-pool connection is replaced when next checked out; -1:
    never."""
    db_statement_timeout_ms: int = Field(default=10_000, ge=0)
    """PostgreSQL `statement_timeout` of every connection, in milliseconds; 0: no limit; not
    applied to SQLite."""
    redis_url: str = ""
    """Redis URL (e.g. `redis://:password@host:6379/0`); when set, the `auto` modes count rate
    limits and share metrics through it, the note cache lives there and readiness checks it;
    empty: no Redis."""
    redis_timeout: float = Field(default=0.5, gt=0)
    """Seconds allowed for connecting to Redis and for each of its replies (client, rate limiter,
    metrics share) before it counts as unavailable."""

    # --- security: headers, https, proxies, cors ---------------------------------------------
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Exact origins allowed to make cross-origin browser requests; production requires at least
    one, each `https://` and without `*`; outside production `http://localhost:<port>` and
    `http://127.0.0.1:<port>` are allowed as well."""
    cors_allow_credentials: bool = True
    """Send `Access-Control-Allow-Credentials: true` to allowed origins; while on, `*` in
    `cors_origins` is refused at start-up."""
    cors_max_age: int = 600
    """Seconds a browser may cache a preflight answer (`Access-Control-Max-Age`)."""
    cors_allow_methods: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    )
    """Methods cross-origin requests may use (`Access-Control-Allow-Methods`)."""
    cors_allow_headers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["Authorization", "Content-Type", "If-Match", "If-None-Match",
                                 "Idempotency-Key", "X-Request-ID"]
    )
    """Request headers cross-origin requests may send (`Access-Control-Allow-Headers`)."""
    cors_expose_headers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["ETag", "Location", "RateLimit", "RateLimit-Policy",
                                 "Retry-After", "X-Request-ID"]
    )
    """Response headers cross-origin scripts may read (`Access-Control-Expose-Headers`)."""
    proxy_headers: Literal["x-forwarded", "forwarded"] = "x-forwarded"
    """The header family a trusted proxy writes, the one the client address and scheme are read
    from: `x-forwarded` (`X-Forwarded-For`, `X-Forwarded-Proto`) or `forwarded` (RFC 7239
    `Forwarded`); the other family is never read."""
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list
    )
    """Addresses or networks (CIDR) of the proxies whose forwarding headers are believed; empty:
    forwarding headers are ignored and the peer's address and scheme are used."""
    https_redirect: bool | None = None
    """Redirect plain-HTTP GET and HEAD to HTTPS (308) and refuse other methods (403), except
    `/health` and `/health/live`; unset: on in production only, where `false` is refused."""
    hsts_max_age: int = 31_536_000
    """`max-age` of `Strict-Transport-Security` in seconds; the header goes on HTTPS responses
    (outside production on plain HTTP too)."""
    hsts_include_subdomains: bool = True
    """Add `includeSubDomains` to `Strict-Transport-Security`."""
    hsts_preload: bool = False
    """Add `preload` to `Strict-Transport-Security`."""
    security_headers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Overrides of the security response headers: `Name: value` sets a header (the value cannot
    contain a comma), `Name:` removes it; a malformed entry stops the start-up."""
    permissions_policy: str = (
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
        "microphone=(), payment=(), usb=(), interest-cohort=()"
    )
    """`Permissions-Policy` header sent on every response; empty: not sent."""

    # --- rate limiting -----------------------------------------------------------------------
    rate_limit: str = "100/15minutes"
    """Budget per client address, as `N/[count]unit` (e.g. `100/15minutes`, `10 per hour`), for
    every request no route budget covers (health probes are exempt); split between workers
    that share no counters."""
    rate_limit_login: str = "10/15minutes"
    """Budget per client address for logins (`POST /api/v1/auth/tokens`), instead of
    `rate_limit`."""
    rate_limit_login_account: str = "5/15minutes"
    """Budget of login attempts per account email, from any address."""
    rate_limit_monitoring: str = "1200/15minutes"
    """Budget per client address for `GET /api/monitor` and `GET /metrics` (dashboard polling,
    Prometheus scrapes), instead of `rate_limit`: it neither spends nor is stopped by that
    one."""
    rate_limit_backend: Literal["auto", "memory", "redis"] = "auto"
    """Where rate-limit counters live: `redis` (one budget for every worker and instance; needs
    `redis_url`), `memory` (per process), `auto` (Redis when `redis_url` is set, else memory)."""
    rate_limit_ipv6_prefix: int = Field(default=56, ge=1, le=128)
    """Prefix length of the IPv6 network whose addresses share one budget."""
    rate_limit_fail_open: bool = True
    """When Redis fails or is slower than `redis_timeout`: on, requests pass; off, they get 503
    and readiness fails on Redis."""
    rate_limit_key_prefix: str = "stalwart:rl:"
    """Prefix of the Redis rate-limit keys; distinct per deployment sharing a Redis."""
    # Leases: see policies/rate_limit/redis.py for why and what a shared budget then admits.
    rate_limit_lease_divisor: int = Field(default=1024, ge=0)
    """Redis backend: each call also takes `limit // N` hits of a budget for this process to
    decide itself, so budgets under N stay exact; 0: every hit asks Redis."""

    # --- input limits --------------------------------------------------------------------------
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    """Largest request body, in bytes; a larger one gets 413."""
    max_json_depth: int = Field(default=32, ge=1)
    """Deepest nesting of arrays and objects in a JSON request body under `/api/`; deeper gets
    400."""

    # --- logging -------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    """Lowest level of the application and server logs (stderr) that is written; the access
    log does not depend on it; production refuses `DEBUG`."""
    log_format: Literal["json", "console"] = "json"
    """Format of the application and server logs: `json` (one object per line) or `console`
    (human-readable); the access log is always JSON."""
    log_anonymize_ip: bool | None = None
    """Write client addresses to the access log with the last IPv4 octet zeroed, IPv6 cut to
    its /48; unset: on in production only (the audit trail is always anonymized)."""
    access_log: bool = True
    """Write one JSON line per request to stdout."""

    # --- monitoring ----------------------------------------------------------------------------
    monitor_token: SecretStr | None = None
    """Bearer token accepted by `/api/monitor` and `/metrics` besides admin tokens, also while
    the database is down; unset: admin tokens only; production refuses one shorter than 24
    characters."""
    metrics_enabled: bool = True
    """Record each request's route, status and duration, the request figures of
    `/api/monitor`, `/metrics` and the 5xx and latency alerts; off: those stay empty."""
    # Off by default: the service has its own metrics and access log, and FastAPI would otherwise
    # look the providers up (three environment reads) on every request, about 7 us each.
    opentelemetry: bool = False
    """FastAPI's native OpenTelemetry spans, metrics and logs; they need an OpenTelemetry SDK set
    up in the process (`opentelemetry-instrument`, not a Stalwart dependency)."""
    health_cache_seconds: float = Field(default=1.0, ge=0)
    """Seconds a readiness check result is reused; 0: every probe checks again (concurrent
    probes still share one check)."""
    health_check_timeout: float = Field(default=1.0, gt=0)
    """Seconds the database and Redis checks each get before readiness fails on them (Redis:
    warns if `rate_limit_fail_open`); slower than half of it warns."""
    health_min_free_disk_mb: int = 200
    """Free space under `data_dir`, in MiB, below which readiness warns; below a quarter of it,
    readiness fails."""
    memory_limit_mb: int = 1024
    """Resident memory of a process, in MiB, from which readiness fails (the service enforces
    nothing else with it)."""
    alert_rss_mb: int = 768
    """Resident memory of a process, in MiB, above which the `memory_rss` alert fires; readiness
    warns from it."""
    alert_5xx_rate: float = 0.05
    """Share of 5xx responses (0 to 1) over the last minute, all processes together, above
    which the `error_rate_5xx` alert fires."""
    alert_p95_ms: float = 500.0
    """95th-percentile response time over the last minute, all processes together, in ms, above
    which the `latency_p95` alert fires."""
    alert_loop_lag_ms: float = 250.0
    """Largest event-loop delay of a process since the previous evaluation, in ms, above which
    the `event_loop_lag` alert fires."""
    alert_min_requests: int = Field(default=20, ge=1)
    """Requests needed in the last minute before the 5xx-rate and latency alerts judge it."""
    alert_eval_seconds: float = Field(default=5.0, gt=0)
    """Seconds between alert evaluations (each change of state is logged on `stalwart.alerts`)."""
    monitor_sample_seconds: float = Field(default=1.0, gt=0)
    """Seconds between samples of the process (memory, CPU) and of its event-loop lag."""
    metrics_share: Literal["auto", "redis", "folder", "off"] = "auto"
    """How workers and instances share their figures: `redis` (every instance on the Redis; a
    folder when `redis_url` is empty), `folder` (`metrics_dir`, one host), `off` (this process
    only), `auto` (Redis when `redis_url` is set, else the folder)."""
    metrics_dir: Path | None = None
    """Folder of the folder share; unset: `<data_dir>/metrics`."""
    metrics_key_prefix: str = "stalwart:metrics:"
    """Prefix of the Redis keys of the metrics share (followed by `service_id`)."""
    metrics_publish_seconds: float = Field(default=2.0, gt=0)
    """Seconds between publications of each process's figures to the share."""
    metrics_stale_seconds: float = Field(default=10.0, gt=0)
    """Age in seconds after which a process's shared figures are ignored (it counts as gone)."""
    metrics_log_seconds: float = Field(default=60.0, ge=0)
    """Seconds between the service's `performance` log lines (`stalwart.metrics` logger, written
    by one process only); 0: off."""

    # --- deployment ----------------------------------------------------------------------------
    workers: int = Field(default=1, ge=1)
    """Worker processes `stalwart serve` starts without `--workers`, and the count it sets for
    them; without shared rate-limit counters each admits 1/N of every budget, and without Redis
    the note cache is off."""
    shutdown_drain_seconds: float = Field(default=0.0, ge=0)
    """Seconds after SIGTERM during which readiness answers 503 while the server still accepts
    and serves, before the listener closes; 0: closes at once."""
    shutdown_timeout_seconds: float = Field(default=30.0, gt=0)
    """Seconds in-flight requests get to finish once the listener has closed; then they are
    cancelled."""
    static_dir: Path | None = None
    """Folder served at `/static`; unset: the folder packaged with stalwart."""
    compression_min_size: int = 500
    """Smallest response body, in bytes, that is compressed (brotli, zstd or gzip)."""
    cache_ttl_seconds: float = Field(default=30.0, ge=0)
    """Seconds note reads stay in the server-side cache (Redis when `redis_url` is set, else in
    the process, off with several workers); 0: no cache, which several instances without Redis
    need."""
    cache_max_entries: int = Field(default=10_000, ge=1)
    """Accounts whose note reads the in-process cache keeps (least recently used dropped first);
    not used with Redis."""
    cache_key_prefix: str = "stalwart:cache:"
    """Prefix of the Redis keys of the note cache."""

    # --- data lifecycle ------------------------------------------------------------------------
    backup_dir: Path | None = None
    """Folder of the backup archives; unset: `<data_dir>/backups`."""
    backup_keep: int = Field(default=7, ge=1)
    """Newest archives kept by the rotation after each backup; older ones are deleted."""
    backup_encryption_key: SecretStr | None = None
    """Passphrase (32+ characters) that encrypts new archives (AES-256-GCM, scrypt-derived key)
    and decrypts them on restore; unset or empty: archives are not encrypted."""
    backup_interval_hours: float = Field(default=0.0, ge=0)
    """Hours between the service's own scheduled backups; 0: none."""
    retention_trash_days: int = Field(default=30, ge=0)
    """Days a deleted note stays in the trash before the purge deletes it; 0: kept forever."""
    retention_tokens_days: int = Field(default=7, ge=0)
    """Days after a token's expiry or revocation before the purge deletes it; 0: kept forever."""
    retention_inactive_accounts_days: int = Field(default=365, ge=0)
    """Age in days after which the purge erases an account that never logged in (admins
    excepted); 0: never."""
    retention_audit_days: int = Field(default=365, ge=0)
    """Days audit events are kept before the purge deletes them; 0: kept forever."""
    retention_backups_days: int = Field(default=30, ge=0)
    """Age in days after which the purge deletes an archive, never the newest one; 0: no age
    limit."""
    purge_interval_hours: float = Field(default=24.0, ge=0)
    """Hours between the service's own scheduled retention purges; 0: none (`stalwart purge`
    still works)."""
    token_ttl_hours: int = Field(default=24 * 30, ge=1)
    """Hours a bearer token issued by login stays valid."""
    backup_verify: bool = True
    """Restore each new archive into a scratch database and compare its row counts."""
    erasure_ledger_path: Path | None = None
    """File recording erased accounts, re-applied after a restore; keep it apart from the
    database and its backups; unset: `<data_dir>/erasures/ledger.jsonl`."""
    scheduler_lock: Literal["auto", "postgres", "redis", "file"] = "auto"
    """Lock that lets one instance at a time run a scheduled job: `postgres` (advisory lock),
    `redis` (needs `redis_url`), `file` (under `<data_dir>/locks`, one host), `auto` (postgres
    on PostgreSQL, else file)."""
    scheduler_lock_prefix: str = "stalwart:lock:"
    """Prefix of the Redis keys of the scheduler lock; distinct per deployment."""
    scheduler_start_delay_seconds: float = Field(default=300.0, ge=0)
    """Seconds after start-up before the scheduled jobs first check whether they are due."""

    # --- authentication ------------------------------------------------------------------------
    # argon2id cost; the defaults are argon2-cffi's RFC 9106 "low memory" profile.
    argon2_time_cost: int = Field(default=3, ge=1)
    """argon2id passes of new password hashes (existing hashes keep theirs); production requires
    at least 2."""
    argon2_memory_kib: int = Field(default=65_536, ge=8)
    """argon2id memory of new password hashes, in KiB; production requires at least 19456."""
    argon2_parallelism: int = Field(default=4, ge=1)
    """argon2id lanes of new password hashes."""

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

    @field_validator(
        "data_dir", "metrics_dir", "static_dir", "backup_dir", "erasure_ledger_path", "monitor_token", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object, info: ValidationInfo) -> object:
        # An empty path is the working directory: `STALWART_STATIC_DIR=` served the checkout,
        # the SQLite database in it included. An empty token was refused as too short.
        if value == "":
            return cls.model_fields[info.field_name or ""].get_default(call_default_factory=True)
        return value

    @field_validator("rate_limit_backend", "scheduler_lock")
    @classmethod
    def _service_configured(cls, value: str, info: ValidationInfo) -> str:
        # Refused here, not when the first job or request needs it: a scheduled job would fail
        # at every wake-up, hours after a start that looked fine. (Both fields come after the
        # URLs, so those are in `info.data` when they are valid.)
        if value == "redis" and not info.data.get("redis_url"):
            raise ValueError("redis needs STALWART_REDIS_URL")
        if value == "postgres" and not str(info.data.get("database_url", "")).startswith("postgresql"):
            raise ValueError("postgres needs a PostgreSQL STALWART_DATABASE_URL")
        return value

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
    def db_command_timeout(self) -> float:
        """Client-side bound on one PostgreSQL command (asyncpg `command_timeout`), in seconds.

        `statement_timeout` is enforced by the server, so it cannot end a wait on a server or
        network that stopped answering (a stalled host, a black-holed route): without this,
        such a request waits until the kernel gives up on the socket (minutes). Past the
        statement timeout, so a slow query still gets the server's own, cleaner cancellation.
        """
        statement = self.db_statement_timeout_ms / 1000 if self.db_statement_timeout_ms else 30.0
        return statement + self.db_pool_timeout

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
