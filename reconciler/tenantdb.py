"""Operations on one tenant database file: create it, migrate it, check it.

Why a module of its own: these are the only functions that write into a customer's
file, and they are called from worker threads during a rollout, so they take plain
values, open their own connection, never touch the registry, and return what happened.

Invariants:
* every migration step runs in ``BEGIN IMMEDIATE`` together with ``PRAGMA
  user_version = n`` (with ``transaction="tenant"`` all pending steps in one, with the
  final version); the version is re-read under that lock, so a concurrent change is
  never migrated twice and a failure leaves the file at exactly one known version;
* steps run on a ``steprun.StepConnection`` (guarded, reset between steps), never on a
  connection that a health gate or an application reads through;
* ``stop_now`` is asked after each committed step: when set, the migration ends there
  (``MigrateResult.stopped``), the file at that step's version, and the next run goes on;
* a busy tenant (an application holds the write lock beyond the busy timeout) is a
  ``RetryableError``, never a failure;
* a new file appears under its final name only once complete (temp + fsync + link),
  is created ``0600`` inside ``0700`` directories, and never replaces an existing file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from reconciler import steprun
from reconciler.context import crash_point
from reconciler.errors import PermanentError, RetryableError, is_busy
from reconciler.migrations import Catalog, MigrationError
from reconciler.versions import unknown_version

DIR_MODE = 0o700
FILE_MODE = 0o600
FILES = ("", "-journal", "-wal", "-shm")  # a database's own file and its SQLite sidecars


@dataclass(frozen=True)
class MigrateResult:
    from_version: int
    to_version: int  # the version the file is at now
    applied: tuple[int, ...] = ()
    error: str | None = None
    stopped: bool = False  # ended early on ``stop_now``, below its target, without error


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A read-write connection to an existing file (never creates one)."""
    return sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, isolation_level=None,
                           timeout=busy_timeout, check_same_thread=False)


def migrate_conn(conn: sqlite3.Connection, catalog: Catalog, target: int,
                 stop_now: Callable[[], bool] | None = None,
                 transaction: str = "step") -> MigrateResult:
    """Bring ``conn``'s file up to ``target``.

    ``transaction="step"``: one transaction per step; ends after the committed step
    during which ``stop_now`` became true. ``"tenant"``: every pending step in one
    transaction with the final ``user_version`` (the file ends at its old version or at
    the target). Steps run as ``steprun`` says, on ``conn`` when it is a
    ``StepConnection``, else on one opened beside it (so nothing a step sets reaches
    ``conn``), with the connection's state reset before each step."""
    if isinstance(conn, steprun.StepConnection):
        return _migrate(conn, catalog, target, stop_now, transaction)
    step_conn = steprun.open_beside(conn)
    try:
        return _migrate(step_conn, catalog, target, stop_now, transaction)
    finally:
        step_conn.close()


def _migrate(conn: steprun.StepConnection, catalog: Catalog, target: int,
             stop_now: Callable[[], bool] | None, transaction: str) -> MigrateResult:
    if transaction == "tenant":
        return _migrate_at_once(conn, catalog, target)
    start: int | None = None
    applied: list[int] = []
    while True:
        try:
            current, done = _step(conn, catalog, target)
        except _StepFailed as failed:
            return MigrateResult(start if start is not None else failed.current,
                                 failed.current, tuple(applied), failed.message)
        if start is None:
            start = current
        if done is None:
            return MigrateResult(start, current, tuple(applied))
        applied.append(done)
        if done >= target or done >= catalog.latest:
            # committed under the lock that read its predecessor: no transaction
            # more is needed to know the file is at the target
            return MigrateResult(start, done, tuple(applied))
        if stop_now is not None and stop_now():
            return MigrateResult(start, done, tuple(applied), stopped=True)


class _StepFailed(Exception):
    def __init__(self, current: int, message: str) -> None:
        super().__init__(message)
        self.current = current
        self.message = message


def _begin(conn: sqlite3.Connection) -> int:
    """``BEGIN IMMEDIATE`` and the file's version read under that lock."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise RetryableError(f"busy: another connection holds the write lock ({exc})"
                                 ) from exc
        raise
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _step(conn: steprun.StepConnection, catalog: Catalog, target: int
          ) -> tuple[int, int | None]:
    """One committed step: (version read, version committed), or (version, None) when
    the file needs none. Raises ``_StepFailed`` (rolled back) or ``RetryableError``."""
    current = _begin(conn)
    if not catalog.knows(current):  # changed since it was planned: never index
        conn.execute("ROLLBACK")
        raise _StepFailed(current, f"the file {unknown_version(current, catalog.latest)}")
    try:
        if current >= target or current >= catalog.latest:
            conn.execute("COMMIT")
            return current, None
        step = catalog.migrations[current]
        conn.reset()
        steprun.execute(conn, step)
        conn.execute(f"PRAGMA user_version = {step.version}")
        conn.execute("COMMIT")
        return current, step.version
    except (MigrationError, sqlite3.Error) as exc:
        raise _failed(conn, catalog, current, exc) from exc


def _failed(conn: sqlite3.Connection, catalog: Catalog, current: int,
            exc: MigrationError | sqlite3.Error) -> Exception:
    """Roll back; the error to raise for ``exc`` (a busy file is retryable)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
        return RetryableError(f"busy during migration: {exc}")
    return _StepFailed(current, str(exc) if isinstance(exc, MigrationError) else
                       f"{catalog.migrations[current].filename}: {type(exc).__name__}: {exc}")


def _migrate_at_once(conn: steprun.StepConnection, catalog: Catalog, target: int
                     ) -> MigrateResult:
    """All pending steps in one transaction, the connection state reset between them."""
    start = current = _begin(conn)
    if not catalog.knows(current):  # changed since it was planned: never index
        conn.execute("ROLLBACK")
        return MigrateResult(start, start, (),
                             f"the file {unknown_version(current, catalog.latest)}")
    try:
        steps = catalog.steps(current, min(target, catalog.latest))
        for step in steps:
            current = step.version - 1
            conn.reset()
            steprun.execute(conn, step)
        if steps:
            conn.execute(f"PRAGMA user_version = {steps[-1].version}")
        conn.execute("COMMIT")
    except (MigrationError, sqlite3.Error) as exc:
        error = _failed(conn, catalog, current, exc)
        if isinstance(error, RetryableError):
            raise error from exc
        return MigrateResult(start, start, (), str(error))
    return MigrateResult(start, steps[-1].version if steps else start,
                         tuple(m.version for m in steps))


def migrate_file(path: Path, catalog: Catalog, target: int, busy_timeout: float,
                 stop_now: Callable[[], bool] | None = None,
                 transaction: str = "step") -> MigrateResult:
    conn = connect(path, busy_timeout)
    try:
        return migrate_conn(conn, catalog, target, stop_now, transaction)
    finally:
        conn.close()


def ensure_dir(path: Path) -> None:
    """Create a directory (and parents) readable only by us."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)


def fsync_path(path: Path) -> None:
    """fsync a file's data, or a directory's entries (what makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_file = fsync_dir = fsync_path  # the names at call sites say which is meant


def remove_quietly(path: Path) -> None:
    """Unlink a database and its sidecars, whichever of them exist."""
    for suffix in FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def fresh_file(path: Path) -> None:
    """Create ``path`` empty and ``0600``, first removing what an earlier attempt left
    under that name (a temp or copy of ours, by name never in service)."""
    remove_quietly(path)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    os.close(fd)


def prove_writable(directory: Path) -> None:
    """Raise ``OSError`` (naming ``directory``) unless a file can be created in it, and
    leave no name behind, not even when killed meanwhile.

    Why: a temp created *before* the journal row that names it is a file no run accounts
    for when a ``SIGKILL`` lands in between. An unnamed ``O_TMPFILE`` file (Linux ≥ 3.11,
    open(2)) proves the same right and vanishes with the process. Where the filesystem
    cannot make one (``EOPNOTSUPP``; ``EISDIR`` on kernels before it), nothing is proved
    here and the first write after the journal row says it instead."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag:
        return
    try:
        fd = os.open(directory, flag | os.O_WRONLY, FILE_MODE)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return
        raise
    os.close(fd)


def create(path: Path, catalog: Catalog, target: int, busy_timeout: float,
           stop_now: Callable[[], bool] | None = None,
           transaction: str = "step") -> MigrateResult:
    """Create ``path`` migrated to ``target``. The file appears complete or not at all:
    stopped early (``stop_now``), the unfinished file is discarded, nothing appears."""
    ensure_dir(path.parent)
    temp = path.with_name(f".{path.name}.creating")
    fresh_file(temp)  # over a leftover from a killed run: never in service, holds no data
    try:
        conn = steprun.open_step(temp, busy_timeout)
        try:
            result = migrate_conn(conn, catalog, target, stop_now, transaction)
            if result.error is None and not result.stopped:
                # persistent: applications get WAL (readers never block the writer)
                conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()  # checkpoints and removes the -wal: the main file is complete
        if result.error is not None or result.stopped:
            remove_quietly(temp)
            return result
        fsync_file(temp)
        crash_point("create.before_link")
        os.link(temp, path)  # fails if something appeared at `path`: never overwrite
        os.unlink(temp)
        fsync_dir(path.parent)
        return result
    except BaseException:
        remove_quietly(temp)
        raise


def check(conn: sqlite3.Connection, pragma: str) -> str | None:
    """None when ``PRAGMA quick_check`` or ``integrity_check`` (``pragma``) says ok,
    else its first complaints."""
    rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}").fetchall()]
    return None if rows == ["ok"] else "; ".join(rows[:5])


@contextlib.contextmanager
def checked_copy(path: Path, busy_timeout: float) -> Iterator[sqlite3.Connection]:
    """A copy restored from a replica (point-in-time restore, cross-host takeover), open
    once ``PRAGMA integrity_check`` passed; closed on exit. Raises PermanentError when the
    check fails or the file (now or while the caller reads it) is not a readable
    database."""
    try:
        conn = connect(path, busy_timeout)
        try:
            bad = check(conn, "integrity_check")
            if bad is not None:
                raise PermanentError(f"restored copy {path} failed integrity_check: {bad}")
            yield conn
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise PermanentError(f"restored copy {path} is not readable: {exc}") from exc
