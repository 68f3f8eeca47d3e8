"""Safety copies of a tenant taken just before its migration (``rollout.snapshot: true``).

Why: a migration that commits cleanly can still leave a tenant unhealthy (its health
gate fails); with a snapshot the tenant goes back to exactly the content it had before
the attempt, not merely to the last step that committed.

Invariants:
* the copy is made with SQLite's online backup API through the worker's own
  connection, so it is a consistent image even while applications read the file;
* it sits beside the tenant file as ``.<name>.db.snapshot`` (same directory, same
  filesystem, ``0600``), is only ever touched by the worker migrating that tenant, and
  is never read by applications or routed to;
* a restore never discards an application's write: it happens only when no other
  connection has committed to the tenant since the copy was taken (``PRAGMA
  data_version`` of the worker's connection is unchanged); otherwise the tenant stays
  as it is and the copy is kept for an operator;
* copies are removed by the rollout once it passes (``remove_for``); a restored copy
  is removed at once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import RetryableError
from reconciler.tenantdb import fresh_file, remove_quietly

SUFFIX = ".snapshot"


@dataclass(frozen=True)
class Copy:
    path: Path
    data_version: int  # of the worker's connection right after the copy


def path_for(tenant: Path) -> Path:
    return tenant.with_name(f".{tenant.name}{SUFFIX}")


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def take(conn: sqlite3.Connection, tenant: Path) -> Copy:
    """Copy the tenant open on ``conn`` (not inside a transaction) beside it."""
    dest = path_for(tenant)
    fresh_file(dest)  # over a copy left by an earlier attempt: it describes an older state
    target = sqlite3.connect(dest)
    try:
        conn.backup(target)
    finally:
        target.close()
    return Copy(dest, _data_version(conn))


def restore(conn: sqlite3.Connection, copy: Copy, busy_timeout: float) -> str | None:
    """Put ``copy`` back into the tenant open on ``conn`` (not inside a transaction).

    Returns None when restored, else why it was not (the copy is then kept). Waits at
    most ``busy_timeout`` for an application's lock, then raises ``RetryableError``."""
    if _data_version(conn) != copy.data_version:
        return (f"not restored from {copy.path}: an application wrote to the tenant after "
                "the snapshot was taken, restoring would lose that write — the copy is kept")
    deadline = time.monotonic() + busy_timeout

    def bounded(status: int, remaining: int, total: int) -> None:
        # the stdlib retries a busy backup forever; give up like every other wait
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) \
                and time.monotonic() > deadline:
            raise RetryableError(f"busy: could not restore {copy.path} within "
                                 f"{busy_timeout:g}s — the copy is kept")

    source = sqlite3.connect(copy.path)
    try:
        source.backup(conn, progress=bounded)
    finally:
        source.close()
    remove_quietly(copy.path)
    return None


def remove_for(tenants: Iterable[Path]) -> None:
    """Remove the copies of these tenant files, if any (the rollout passed)."""
    for tenant in tenants:
        remove_quietly(path_for(tenant))
