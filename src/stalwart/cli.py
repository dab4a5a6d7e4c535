"""The operator command line: `stalwart serve | migrate | check-config | create-admin | ...`."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from stalwart.ops.commands import backup_app, gdpr_app, purge_command, restore_command
from stalwart.settings import Settings, invalid_settings, production_problems

__all__ = ["app", "main"]

app = typer.Typer(help="Stalwart: operate the API service.", no_args_is_help=True, add_completion=False)
err = Console(stderr=True)
out = Console()


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:  # each bad setting on a line, no trace and no value
        for line in invalid_settings(exc):
            err.print(Text(f"invalid configuration: {line}"), soft_wrap=True)
        raise typer.Exit(2) from None


@app.command("check-config")
def check_config() -> None:
    """Print whether the configuration is safe for its environment, one line per problem."""
    settings = _settings()
    problems = production_problems(settings)
    for problem in problems:
        err.print(f"[red]unsafe:[/red] {problem}")
    if problems:
        raise typer.Exit(1)
    out.print(f"configuration ok for {settings.env.value}")


@app.command()
def migrate(
    to: Annotated[str, typer.Option("--to", help="Target revision (default head; 'base' empties)")] = "head",
) -> None:
    """Upgrade the database schema to head, or up/down to a given revision."""
    from alembic.util import CommandError

    from stalwart.data.migrate import current_revision, migrate_to

    settings = _settings()
    url = settings.effective_database_url
    try:
        migrate_to(url, to)
    except CommandError:
        err.print(Text(f"error: no revision {to!r}; see `stalwart migrate --help` and CHANGELOG.md"), soft_wrap=True)
        raise typer.Exit(1) from None
    out.print(f"database at revision {current_revision(url) or 'base'}")


@app.command("create-admin")
def create_admin(
    email: Annotated[str, typer.Option(prompt=True)],
    display_name: Annotated[str, typer.Option(help="For a new account")] = "Administrator",
    password: Annotated[
        str | None,
        typer.Option(help="For a new account; asked for (twice, hidden) when not given", envvar=None),
    ] = None,
) -> None:
    """Create an account with the admin role, or give the role to an existing account.

    An existing account keeps its password and display name.
    """
    from stalwart.ops.admins import PasswordNeeded, create_or_promote_admin

    settings = _settings()

    def run(secret: str | None) -> tuple[str, bool]:
        return asyncio.run(create_or_promote_admin(settings, email, display_name, secret))

    try:
        try:
            account_id, created = run(password)
        except PasswordNeeded:
            secret = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
            account_id, created = run(secret)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if created:
        out.print(f"created admin {account_id}")
        return
    out.print(f"promoted admin {account_id}")
    if password is not None or display_name != "Administrator":
        err.print("note: promoted only; the account keeps its password and display name")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: STALWART_WORKERS, 1)")
    ] = None,
    ssl_certfile: Annotated[str | None, typer.Option(help="TLS certificate (PEM)")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="TLS private key (PEM)")] = None,
) -> None:
    """Serve the API (uvicorn with uvloop and httptools, graceful shutdown)."""
    from stalwart.app import UnsafeConfiguration, create_app
    from stalwart.policies.rate_limit.factory import unsplittable_budgets
    from stalwart.server import run_server

    settings = _settings()
    try:
        create_app(settings)  # fail fast, in the parent, on an unsafe production configuration
    except UnsafeConfiguration as exc:
        for problem in exc.problems:
            err.print(f"[red]unsafe:[/red] {problem}")
        raise typer.Exit(1) from None
    for problem in (refused := unsplittable_budgets(settings, workers or settings.workers)):
        err.print(Text(f"unsafe: {problem}"), soft_wrap=True)
    if refused:
        raise typer.Exit(1)
    code = run_server(
        settings, host=host, port=port, workers=workers or settings.workers,
        ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
    )
    raise typer.Exit(code)


# Data lifecycle (stalwart.ops.commands): purge, gdpr export|erase, backup [verify], restore.
app.command("purge")(purge_command)
app.add_typer(gdpr_app, name="gdpr")
app.add_typer(backup_app, name="backup")
app.command("restore")(restore_command)


@app.command("config-reference")
def config_reference() -> None:
    """Print the configuration reference (every STALWART_* variable) as Markdown."""
    from stalwart.settings_reference import render_reference

    typer.echo(render_reference(), nl=False)


@app.command()
def audit(
    url: Annotated[str, typer.Argument(help="Base URL of the API, e.g. https://api.example.com")],
    insecure: Annotated[bool, typer.Option(help="Do not verify the TLS certificate")] = False,
    http_port: Annotated[int, typer.Option(help="Port where plain http must not be served")] = 80,
    body_size: Annotated[
        int, typer.Option(help="Bytes of a body the API must refuse with 413", min=1024)
    ] = 2 << 20,
    timeout: Annotated[float, typer.Option(help="Seconds for each request", min=1)] = 10.0,
) -> None:
    """Check a live API against the production policy; exit 1 if a check fails, 2 if it cannot run."""
    from rich.table import Table
    from rich.text import Text

    from stalwart.audit import AuditError, Outcome, run_audit

    try:
        findings = run_audit(
            url, verify=not insecure, http_port=http_port, body_size=body_size, request_seconds=timeout
        )
    except AuditError as exc:
        err.print(Text(f"error: {exc}"))
        raise typer.Exit(2) from None
    styles = {Outcome.PASS: "green", Outcome.FAIL: "red", Outcome.NOT_CHECKED: "yellow"}
    table = Table(title=Text(f"policy audit of {url}"))
    for column in ("", "check", "result", "policy"):
        table.add_column(column)
    for f in findings:
        # Text, not markup: details quote what the audited server sent.
        table.add_row(Text(f.outcome, style=styles[f.outcome]), f.check, Text(f.detail), f.policy)
    out.print(table)
    counts = {outcome: sum(f.outcome is outcome for f in findings) for outcome in Outcome}
    out.print(
        f"{counts[Outcome.PASS]} of {len(findings)} checks passed, {counts[Outcome.FAIL]} failed,"
        f" {counts[Outcome.NOT_CHECKED]} not checked"
    )
    if counts[Outcome.FAIL]:
        raise typer.Exit(1)


@app.command("build-static")
def build_static_command(
    directory: Annotated[
        Path | None, typer.Argument(help="Folder (default: STALWART_STATIC_DIR or packaged)")
    ] = None,
) -> None:
    """Write .br and .gz variants next to each compressible static file (run at build time)."""
    from stalwart.policies.static import build_static, static_directory

    target = directory if directory is not None else static_directory(_settings())
    if not target.is_dir():
        err.print(Text(f"error: {target} is not a folder"), soft_wrap=True)
        raise typer.Exit(1)
    written = build_static(target)
    for path in written:
        out.print(str(path))
    out.print(f"{len(written)} compressed variants written under {target}")


def _connection_failure(exc: BaseException) -> BaseException | None:
    """The error in `exc`'s chain saying the database or Redis cannot be reached, if any.

    Only connection-level failures: any other database error (a failed statement, a schema
    conflict) keeps its own message and trace.
    """
    import sqlite3

    import asyncpg
    import redis.exceptions

    reached: tuple[type[BaseException], ...] = (
        ConnectionRefusedError,
        ConnectionResetError,
        ConnectionAbortedError,
        TimeoutError,
        socket.gaierror,
        asyncpg.PostgresConnectionError,
        asyncpg.InvalidCatalogNameError,
        asyncpg.InvalidPasswordError,
        asyncpg.InvalidAuthorizationSpecificationError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    )
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, reached):
            return current
        if isinstance(current, sqlite3.OperationalError) and "unable to open database file" in str(current):
            return current
        if type(current) is OSError and str(current).startswith("Multiple exceptions"):
            return current  # asyncio: every address of the host refused or timed out
        current = current.__cause__
    return None


def main() -> None:
    try:
        code = app()
    except Exception as exc:
        cause = _connection_failure(exc)
        if cause is None:
            raise
        err.print(
            Text(
                f"error: a service the command needs cannot be used ({type(cause).__name__});"
                " check STALWART_DATABASE_URL and STALWART_REDIS_URL"
            ),
            soft_wrap=True,
        )
        code = 1
    sys.exit(code)
