"""Operator commands of the data lifecycle, registered on the `stalwart` CLI (stalwart.cli):
`purge`, `gdpr export|erase`, `backup [verify]`, `restore`.

Output is plain lines (no wrapping, no markup), so scripts can read it: `stalwart backup`
prints the archive path as its last line; a refused archive is one `error:` line on stderr.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import orjson
import typer
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from stalwart.data.engine import Database
from stalwart.settings import Settings, invalid_settings

__all__ = ["backup_app", "gdpr_app", "purge_command", "restore_command"]

T = TypeVar("T")

gdpr_app = typer.Typer(help="GDPR requests: export or erase one account's personal data.", no_args_is_help=True)
backup_app = typer.Typer(help="Make a backup archive (no subcommand), or verify one.", invoke_without_command=True)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:  # each bad setting, no trace and no value
        _fail("invalid configuration: " + "; ".join(invalid_settings(exc)), code=2)
        raise AssertionError from exc  # unreachable


def _say(line: str) -> None:
    typer.echo(line)


def _fail(line: str, code: int = 1) -> None:
    typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


async def _with_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    db = Database(settings)
    await db.start()
    try:
        return await work(db)
    finally:
        await db.close()


def _where(settings: Settings) -> str:
    return make_url(settings.effective_database_url).render_as_string(hide_password=True)


# --- retention -----------------------------------------------------------------------------


def purge_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count only; remove nothing.")] = False,
) -> None:
    """Apply the retention policies now and print what was removed, per kind of data."""
    from stalwart.ops.retention import purge

    settings = _settings()
    report = asyncio.run(_with_db(settings, lambda db: purge(db, settings, dry_run=dry_run, actor="cli")))
    for line in report.lines():
        _say(line)


# --- GDPR ------------------------------------------------------------------------------------


@gdpr_app.command("export")
def gdpr_export(
    account: Annotated[str, typer.Option("--account", help="Account id")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here (0600) instead of stdout")] = None,
) -> None:
    """Every piece of personal data held on one account, as one JSON document."""
    from stalwart.ops.gdpr import export_account

    settings = _settings()

    async def run(db: Database) -> bytes | None:
        async with db.session() as session:
            document = await export_account(session, account, actor="cli")
        if document is None:
            return None
        return orjson.dumps(document.model_dump(mode="json"), option=orjson.OPT_INDENT_2) + b"\n"

    data = asyncio.run(_with_db(settings, run))
    if data is None:
        _fail(f"no account with id {account}")
        return
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    _say(f"wrote the export of account {account} to {output} ({len(data)} bytes)")


@gdpr_app.command("erase")
def gdpr_erase(
    account: Annotated[str, typer.Option("--account", help="Account id")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete one account and all its personal data; pseudonymize its audit trail."""
    from stalwart.ops.erasure_ledger import ledger_path
    from stalwart.ops.gdpr import ErasureReport, erase_account

    settings = _settings()
    if not yes and not typer.confirm(f"Erase account {account} and all its data for good?"):
        _fail("aborted, nothing erased")

    async def run(db: Database) -> ErasureReport | None:
        async with db.session() as session:
            return await erase_account(session, settings, account, actor="cli", reason="operator request")

    report = asyncio.run(_with_db(settings, run))
    if report is None:
        _fail(f"no account with id {account}")
        return
    _say(
        f"erased account {account}: {report.notes} notes and {report.tokens} tokens deleted, "
        f"{report.audit_events} audit events pseudonymized as {report.pseudonym}"
    )
    _say(f"erasure recorded in the ledger {ledger_path(settings)}")


# --- backup and restore --------------------------------------------------------------------


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{table} {n}" for table, n in sorted(counts.items()))


@backup_app.callback()
def backup_command(
    ctx: typer.Context,
    verify: Annotated[
        bool | None,
        typer.Option(
            "--verify/--no-verify",
            help="Restore into a scratch database after (default: STALWART_BACKUP_VERIFY).",
        ),
    ] = None,
) -> None:
    """Make a consistent online backup; print the archive's path as the last line."""
    if ctx.invoked_subcommand is not None:
        return
    from stalwart.ops.archive import ArchiveError
    from stalwart.ops.audit import record
    from stalwart.ops.backup import BackupError, create_backup
    from stalwart.ops.pg import PgToolError
    from stalwart.ops.restore import verify_archive
    from stalwart.ops.scheduler import BACKUP_EVENT

    settings = _settings()
    try:
        result = asyncio.run(create_backup(settings))
    except (BackupError, PgToolError, OSError) as exc:
        _fail(f"backup failed: {exc}")
        return
    manifest = result.manifest
    _say(f"backed up {manifest.backend} database {_where(settings)} at schema {manifest.schema_revision or 'base'}")
    _say(f"rows: {_counts(manifest.row_counts)}")
    _say("encrypted: yes (AES-256-GCM)" if manifest.encryption else "encrypted: no")
    verified: bool | None = None
    problem = ""
    if settings.backup_verify if verify is None else verify:
        try:
            verify_archive(settings, result.path)
            verified = True
            _say("verified: restored into a scratch database, row counts match the manifest")
        except (ArchiveError, PgToolError) as exc:
            verified = False
            problem = str(exc)

    async def audit(db: Database) -> None:
        async with db.session() as session:
            record(
                session,
                BACKUP_EVENT,
                actor="cli",
                details={
                    "archive": result.path.name,
                    "size": result.path.stat().st_size,
                    "verified": verified,
                    "rows": sum(manifest.row_counts.values()),
                },
            )
            await session.commit()

    asyncio.run(_with_db(settings, audit))
    if problem:
        typer.echo(f"error: verification failed: {problem}", err=True)
    _say(str(result.path))
    if problem:
        raise typer.Exit(1)


@backup_app.command("verify")
def backup_verify(
    file: Annotated[Path, typer.Argument(help="Archive to check", exists=False)],
) -> None:
    """Check checksum and decryptability, restore into a scratch database, compare row counts."""
    from stalwart.ops.archive import ArchiveError
    from stalwart.ops.pg import PgToolError
    from stalwart.ops.restore import verify_archive

    settings = _settings()
    try:
        report = verify_archive(settings, file)
    except (ArchiveError, PgToolError) as exc:
        _fail(f"archive refused: {exc}")
        return
    manifest = report.manifest
    _say(
        f"archive ok: {manifest.backend} backup of {manifest.created_at.isoformat()}, "
        f"schema {manifest.schema_revision or 'base'}, "
        f"{'encrypted' if manifest.encryption else 'not encrypted'}"
    )
    _say(f"restored into a scratch database; row counts match the manifest: {_counts(report.counts)}")


def restore_command(
    file: Annotated[Path, typer.Argument(help="Archive made by `stalwart backup`")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Replace the database with an archive's, migrate to head, re-apply recorded erasures."""
    from stalwart.ops.archive import ArchiveError
    from stalwart.ops.pg import PgToolError
    from stalwart.ops.restore import restore_archive

    settings = _settings()
    if not yes and not typer.confirm(f"Replace every table of {_where(settings)} with the contents of {file.name}?"):
        _fail("aborted, nothing restored")
    try:
        report = restore_archive(settings, file)
    except (ArchiveError, PgToolError) as exc:
        _fail(f"archive refused: {exc}")
        return
    except sqlite3.Error as exc:  # the target is locked or unwritable; it is left as it was
        _fail(f"restore failed: {exc}")
        return
    manifest = report.manifest
    if report.created_database:
        _say(f"created the missing database {make_url(settings.effective_database_url).database}")
    _say(
        f"restored {file.name} (made {manifest.created_at.isoformat()}, "
        f"schema {manifest.schema_revision or 'base'}) into {_where(settings)}"
    )
    _say(f"rows: {_counts(report.counts)}")
    _say(f"schema migrated to {report.revision or 'base'}; erasures re-applied from the ledger: {report.reapplied}")
    _say(f"bearer tokens revoked (everyone signs in again): {report.tokens_revoked}")
