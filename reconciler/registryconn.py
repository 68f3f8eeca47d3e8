"""An open connection to the registry ``central.db`` and its transactions.

Why a module of its own: every group of registry operations (``registry.Registry`` and
the mixins it is composed of) stands on the same three things: the open
``sqlite3`` connection, the schema version it is at, and a transaction that either
commits whole or not at all. ``RegistryConnection`` is that base; ``Registry`` opens the
file, upgrades it and adds the tenants' rows.

Invariants:
* one connection per ``RegistryConnection``, used by one thread at a time, in
  autocommit mode (``isolation_level=None``): every transaction is explicit;
* ``transaction`` takes the write lock up front (``BEGIN IMMEDIATE``) and commits or
  rolls back as a whole; a busy registry is a ``RetryableError``, any other failure to
  begin a ``PermanentError`` (``classify``);
* ``durable_transaction`` restores ``synchronous=NORMAL`` however its block ends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler.errors import PermanentError, RetryableError, is_busy


class RegistryConnection:
    """A connection to central.db: its version and its transactions."""

    def __init__(self, path: Path, conn: sqlite3.Connection, readonly: bool) -> None:
        self.path = path
        self.conn = conn
        self.readonly = readonly

    @property
    def version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise classify(exc, "registry transaction") from exc
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    @contextmanager
    def durable_transaction(self) -> Iterator[sqlite3.Connection]:
        """A transaction whose commit also survives power loss: WAL with
        ``synchronous=NORMAL`` may lose the last commits on power failure, which is fine
        for events but not for the step that switches a tenant to another file."""
        self.conn.execute("PRAGMA synchronous=FULL")
        try:
            with self.transaction() as conn:
                yield conn
        finally:
            self.conn.execute("PRAGMA synchronous=NORMAL")


def classify(exc: sqlite3.OperationalError, what: str) -> Exception:
    if is_busy(exc):
        return RetryableError(f"{what}: {exc}")
    return PermanentError(f"{what}: {exc}")
