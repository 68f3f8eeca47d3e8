"""One writer per fleet: an OS lock next to ``central.db``.

Why: two reconcilers acting at once could both create, migrate or relocate the same
tenant. ``flock`` is released by the kernel when the holder dies (even by SIGKILL), so
a crashed run never leaves a stale lock behind. The lock file records the holder's pid
and command line only to name it in messages; the lock itself is the ``flock``.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from reconciler.errors import LockHeld, ReconcileError
from reconciler.ownership import explain
from reconciler.supervise import started_pid


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

    def __enter__(self) -> FleetLock:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
