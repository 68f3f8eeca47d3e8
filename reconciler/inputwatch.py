"""Watching the desired state's files: what to watch, and a thread that watches it.

Why a module of its own: the daemon runs a pass soon after ``tenants.yaml`` or a file
under ``migrations/`` changed. Which changes matter (the config file, ``.sql`` and
``.py`` files of the migrations and their ``checks/``, not editors' dot files), where to
look for them, and a cheap fingerprint that catches an event the watcher missed are one
concept, apart from the daemon's loop that decides when a pass runs. The watching is
done by watchfiles (an existing engine), in a thread of its own.

Invariants:
* directories are watched non-recursively, the parents included, because editors and
  git replace files by rename;
* a burst of changes is debounced into one batch (``DEBOUNCE_MS``, ending after
  ``STEP_MS`` of quiet) and each batch wakes the loop once through ``wake``;
* the watcher thread never raises: an error is queued for the loop (which restarts the
  watcher) and wakes it; ``stop`` returns within about two steps.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import watchfiles

DEBOUNCE_MS = 1000  # most time one burst of changes is grouped over
STEP_MS = 200  # quiet time that ends a burst; also the watcher's sleep granularity


@dataclass(frozen=True)
class WatchSet:
    """What the watcher looks at: directories (non-recursive) and the paths that matter."""

    config: Path
    migrations: Path

    @property
    def migration_dirs(self) -> frozenset[Path]:
        return frozenset((self.migrations, self.migrations / "checks"))

    def directories(self) -> tuple[Path, ...]:
        wanted = {self.config.parent, self.migrations.parent, *self.migration_dirs}
        return tuple(sorted(d for d in wanted if d.is_dir()))

    def relevant(self, change: watchfiles.Change, path: str) -> bool:
        p = Path(path)
        if p == self.config or p in self.migration_dirs:
            return True
        return (p.parent in self.migration_dirs and p.suffix in (".sql", ".py")
                and not p.name.startswith("."))

    def signature(self) -> tuple[Any, ...]:
        """Cheap fingerprint of the watched files, to catch an event the watcher missed."""
        out: list[Any] = []
        for p in (self.config, *sorted(self.migration_dirs)):
            with contextlib.suppress(OSError):
                st = p.stat()
                out.append((str(p), st.st_ino, st.st_size, st.st_mtime_ns))
                if p.is_dir():
                    out.extend((e.name, e.inode(), e.stat().st_size, e.stat().st_mtime_ns)
                               for e in sorted(os.scandir(p), key=lambda e: e.name))
        return tuple(out)


class Watcher:
    """watchfiles in a thread: each debounced batch of relevant changes wakes the loop."""

    def __init__(self, watch: WatchSet, wake: Callable[[], None]) -> None:
        self.watch = watch
        self.directories = watch.directories()
        self.events: queue.SimpleQueue[set[tuple[watchfiles.Change, str]] | Exception] = \
            queue.SimpleQueue()
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for changes in watchfiles.watch(
                    *self.directories, watch_filter=self.watch.relevant, debounce=DEBOUNCE_MS,
                    step=STEP_MS, stop_event=self._stop, rust_timeout=0, recursive=False,
                    raise_interrupt=False, ignore_permission_denied=True):
                self.events.put(changes)
                self._wake()
        except Exception as exc:  # reported to the loop, which restarts the watcher
            self.events.put(exc)
            self._wake()

    def drain(self) -> tuple[list[str], Exception | None]:
        paths: list[str] = []
        error: Exception | None = None
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return sorted(set(paths)), error
            if isinstance(item, Exception):
                error = item
            else:
                paths.extend(p for _, p in item)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * STEP_MS / 1000 + 1)
