"""One writer per fleet: an OS lock next to ``central.db``.

Why: two reconcilers acting at once could both create, migrate or relocate the same
tenant. ``flock`` is released by the kernel when the holder dies (even by SIGKILL), so
a crashed run never leaves a stale lock behind. The lock file records the holder's pid
and command line only to name it in messages; the lock itself is the ``flock``.
``if_free`` is the daemon's way to touch the registry between passes: only when no one
holds the lock, never waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from reconciler.context import Logger
from reconciler.errors import LockHeld, ReconcileError
from reconciler.ownership import explain
from reconciler.registry import Registry
from reconciler.supervise import started_pid


class PassInProgress(LockHeld):
    """A read-only plan was asked for (``--no-wait``) while a pass holds the lock."""

    def __init__(self, lock_path: str, holder: str) -> None:
        super().__init__(lock_path, holder)
        self.args = (f"another reconciler is applying a pass on this fleet right now "
                     f"({holder}, lock {lock_path}): a plan now would mix its half-done work "
                     "into the diff, so none is shown — run again when it has finished, or "
                     "without --no-wait to wait for it",)

    def __str__(self) -> str:
        return str(self.args[0])


class FleetLock:
    def __init__(self, central: Path) -> None:
        self.path = central.with_name(central.name + ".lock")
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "unknown holder"
        return text or "unknown holder"

    def acquire(self, wait: bool, on_wait: Callable[[str], None] | None = None) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ReconcileError(f"cannot take the fleet lock (a command that changes the "
                                 f"fleet needs write access to {self.path.parent}): "
                                 f"{explain(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder()
            if not wait:
                os.close(fd)
                raise LockHeld(str(self.path), holder) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"pid {started_pid()} since {started}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @contextlib.contextmanager
    def shared(self, wait: bool, on_wait: Callable[[str], None] | None = None
               ) -> Iterator[None]:
        """Keep any pass from running for the length of a block (a reader's plan must not
        mix in a half-done pass), creating and changing nothing: a shared ``flock`` on
        the lock file opened read-only, when it exists and this user may read it.
        Another reconciler mid-pass: wait for it (``on_wait`` is told who it is), or
        raise ``PassInProgress`` when ``wait`` is False."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # none (no pass ever ran), or not readable by this user: a
            yield        # read-only reader cannot tell, and plans as before
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self.holder()
                if not wait:
                    raise PassInProgress(str(self.path), holder) from None
                if on_wait is not None:
                    on_wait(holder)
                fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> FleetLock:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def if_free(central: Path, work: Callable[[Registry], object], log: Logger, failed: str,
            *, create: bool, **fields: Any) -> bool:
    """``work(registry)`` under the fleet lock, for the daemon's chores outside a pass
    (an event, lineages, registrations): never waits for the lock — False, doing
    nothing, when another reconciler holds it (that one's pass does the same work). The
    registry is opened for writing; a missing one is created (and upgraded) when
    ``create``, else ``work`` is skipped. A failure (``ReconcileError``, ``OSError``,
    ``sqlite3.Error``) is logged as the warning ``failed`` with its ``error`` and
    ``fields``, never raised. True when the lock was taken. Raises ``ReconcileError``
    when the lock file cannot be created."""
    lock = FleetLock(central)
    try:
        lock.acquire(wait=False)
    except LockHeld:
        return False
    try:
        if create or os.path.exists(central):
            registry = Registry.open(central)
            try:
                work(registry)
            finally:
                registry.close()
    except (ReconcileError, OSError, sqlite3.Error) as exc:
        log.warning(failed, error=str(exc), **fields)
    finally:
        lock.release()
    return True
