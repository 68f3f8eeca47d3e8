"""Read a WAL-mode SQLite file without creating, locking for writing or changing any file.

Why: ``plan``, ``status``, ``history``, ``route`` and ``validate`` must work for a user
who may only *read* ``central.db`` and its folder (a CI job, an operator's own account),
and must leave nothing behind for anyone: no ``-wal``, no ``-shm``, no changed byte
(DESIGN §5, "Reading changes nothing"). A plain ``mode=ro`` open does neither: on a WAL
database SQLite needs the ``-shm`` wal-index, so it creates ``-wal`` and ``-shm`` when
the folder is writable (and, being read-only, cannot remove them again) and fails with
"attempt to write a readonly database" when it is not.

How (SQLite's rules: https://www.sqlite.org/wal.html "Read-Only Databases",
https://www.sqlite.org/uri.html ``immutable``, https://www.sqlite.org/lockingv3.html):

* A ``-wal`` (or ``-journal``) beside the file: a connection has the database open now,
  or one died. Committed transactions may be in the ``-wal`` only, and SQLite's
  wal-index protocol is the only correct way to read them, so the file is opened with
  ``mode=ro&readonly_shm=1`` (``_first``): SQLite opens the existing ``-shm``
  read-only and builds its wal-index in heap memory (SQLite ≥ 3.22), so not even the
  ``-shm`` changes. Nothing is created (but a ``-shm`` beside a crashed writer's lone
  ``-wal`` when the folder is writable).
* No ``-wal``: the main file holds every committed transaction. It is read with
  ``immutable=1`` (SQLite then opens no ``-wal``/``-shm`` and takes no lock) while this
  process holds a POSIX *read* lock on SQLite's SHARED byte range of the file — what
  any SQLite reader holds. A writer may still open the database meanwhile and write
  to its ``-wal`` (even checkpoint), but it can no longer take the EXCLUSIVE lock a
  connection needs to delete the ``-wal`` when it closes. So if there is still no
  ``-wal`` once the read is over, no writer had the file open during the read and what
  was read is one committed state; otherwise the read is discarded and done again
  (then by SQLite's own protocol, as above). A writer in rollback-journal mode cannot
  write the file at all while the read lock is held.

Invariants: the lock is taken with an ``O_RDONLY`` descriptor (read access is all that
is needed) and released before the file is closed by this module only; never use this
on a file the *same process* has open for writing (POSIX locks are per process: closing
this descriptor would drop that connection's locks too).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from reconciler.errors import PermanentError, RetryableError

T = TypeVar("T")

# SQLite's lock bytes (os_unix.c / lockingv3.html): PENDING at 1 GiB, RESERVED after it,
# then the 510-byte SHARED range; an EXCLUSIVE lock is a write lock on the SHARED range.
_SHARED_FIRST = 0x40000000 + 2
_SHARED_SIZE = 510
ATTEMPTS = 20  # reads discarded because a writer came by, before giving up
PAUSE = 0.05  # seconds between attempts


class ReadRaced(RetryableError):
    """A writer opened the file while it was being read; the read is discarded."""


class _Vanished(Exception):
    """The ``-wal`` was removed between looking for it and opening the file."""


def _side(path: Path, suffix: str) -> bool:
    return os.path.lexists(f"{path}{suffix}")


def in_use(path: Path) -> bool:
    """A ``-wal`` or hot ``-journal`` is beside ``path``: read it by SQLite's protocol."""
    return _side(path, "-wal") or _side(path, "-journal")


def _connect(uri: str, timeout: float) -> sqlite3.Connection:
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout,
                           check_same_thread=False)


_UNTOUCHED = ("mode=ro&readonly_shm=1", "mode=ro")


def first(uri: str, timeout: float, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn`` on a read-only connection to an existing file (``uri`` without a query)
    that may have a ``-wal``: ``readonly_shm=1`` makes SQLite open the ``-shm`` read-only
    and keep its wal-index in heap memory, so not even the ``-shm`` changes (after a
    crash a writable ``-shm`` would be rebuilt). Only without a ``-shm`` (a ``-wal``
    alone) is it opened as plain ``mode=ro``, which creates the ``-shm`` if the folder
    is writable. The connection is closed afterwards."""
    for query in _UNTOUCHED:
        conn = _connect(f"{uri}?{query}", timeout)
        try:
            return fn(conn)
        except sqlite3.OperationalError:
            if query == _UNTOUCHED[-1]:
                raise
        finally:
            conn.close()
    raise AssertionError("unreachable")  # pragma: no cover


def user_version(uri: str, timeout: float) -> int:
    """``PRAGMA user_version`` of an existing file, changing no byte (see ``_first``)."""
    return first(uri, timeout,
                  lambda conn: int(conn.execute("PRAGMA user_version").fetchone()[0]))


def _shared_lock(fd: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, _SHARED_SIZE, _SHARED_FIRST)
    except OSError:  # EAGAIN/EACCES: a connection holds EXCLUSIVE (closing, checkpointing)
        return False
    return True


def read(path: Path, fn: Callable[[sqlite3.Connection], T], *, timeout: float = 10.0) -> T:
    """``fn(connection)`` on a read-only connection to ``path``, leaving no file behind.

    ``fn`` must only read; it may run more than once (a read raced by a writer is
    discarded and done again) and must not keep the connection. Raises
    ``FileNotFoundError`` when ``path`` does not exist, ``PermissionError`` when it
    cannot be read, ``PermanentError`` when SQLite cannot read it (with the reason and
    what to do), ``ReadRaced`` when writers kept racing every attempt.
    """
    for _ in range(ATTEMPTS):
        if in_use(path):
            try:
                return _read_shared(path, fn, timeout)
            except _Vanished:  # the writer closed (and removed its -wal) meanwhile
                continue
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if not _shared_lock(fd):
                time.sleep(PAUSE)
                continue
            if in_use(path):  # a writer came between the look and the lock
                continue
            conn = _connect(f"{path.as_uri()}?immutable=1", timeout)
            try:
                result = fn(conn)
                raced = in_use(path)  # still under the lock: see the module docstring
            except sqlite3.DatabaseError:
                # a WAL writer that opened after the look may checkpoint pages into the
                # file while it is read (a checkpoint needs no lock our SHARED one blocks):
                # "malformed" then, but its -wal is still there — discard and read again
                if not in_use(path):
                    raise
                raced = True
            finally:
                conn.close()
        finally:
            os.close(fd)  # releases the lock
        if not raced:
            return result
    raise ReadRaced(f"{path} was being written during every attempt to read it; "
                    "try again")


def _read_shared(path: Path, fn: Callable[[sqlite3.Connection], T], timeout: float) -> T:
    """Read while another connection has the database open: SQLite's own protocol."""
    try:
        return first(path.as_uri(), timeout, fn)
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if not in_use(path):
            raise _Vanished from exc
        if "readonly" in text or "unable to open" in text:
            raise PermanentError(
                f"cannot read {path} while it is open for writing: SQLite needs to read "
                f"{path.name}-wal and {path.name}-shm beside it ({text}); give this user "
                f"read access to them (e.g. the service's group with UMask=0027), or "
                "retry when the writer has finished") from exc
        raise
