"""A SQLite database file readable by its owner only.

SQLite creates a missing file with the process's umask (usually 0644: anyone on the host could
read every account and note), and its WAL and shared-memory files copy the database file's
mode. So the file is made before SQLite opens it, 0600 in a 0700 folder, and an existing file
of ours that others can read is tightened, as the backups and the erasure ledger are. A file
another user owns (a database shared through its group on purpose) is that user's to set: it is
left as it is rather than failing the start on a chmod we may not make.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["prepare_sqlite_file"]


def prepare_sqlite_file(database: str | None) -> None:
    """Make `database` (a SQLite path; None or ":memory:" do nothing) private before use."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # The journal files too: a WAL left by an earlier, readable database keeps its mode.
        for file in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
            try:
                status = file.stat()
            except FileNotFoundError:
                continue
            mode = stat.S_IMODE(status.st_mode)
            if mode & 0o077 and status.st_uid == os.geteuid():
                file.chmod(mode & 0o700)
    else:
        os.close(fd)
