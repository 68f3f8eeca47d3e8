"""Observe the fleet as it really is: registry rows plus what each file says.

Why: the file's ``user_version`` is the truth (DESIGN §5, "observed, not assumed"); the
registry is a cache of it that we correct. Observation is read-only and produces an
immutable ``Observed`` value for the pure planner.

The steady state is the hot path (a daemon spends its life confirming nothing
changed), so ``read_user_version`` reads the 4 header bytes at offset 60 when that is
provably right, and asks SQLite otherwise:
* a ``-wal`` beside the file may hold a newer header page than the file → ask SQLite;
* a ``-journal`` beside it may be hot (a writer died mid-commit, the file's header is
  *ahead* of the truth until rolled back) → ask SQLite, which rolls it back.
The value is only ever used to plan: migrations re-read it under their write lock.

``observe`` lists each region directory once (``os.scandir``) instead of three ``stat``
calls per tenant, so a converged fleet costs one ``open`` + ``pread`` + ``close`` per file.
The listing is a snapshot taken just before the headers are read; a ``-wal`` or
``-journal`` that appears after it is seen on the next pass, like any later change.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from reconciler.desired import Desired
from reconciler.registry import Snapshot

MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class FileState:
    path: Path
    exists: bool
    user_version: int | None = None  # None when missing or unreadable
    error: str | None = None  # why it is not a usable SQLite database
    wal: bool = False

    @property
    def usable(self) -> bool:
        return self.exists and self.error is None and self.user_version is not None


@dataclass(frozen=True)
class RegionState:
    name: str
    path: Path
    problem: str | None = None


@dataclass(frozen=True)
class Observed:
    registry: Snapshot
    files: Mapping[Path, FileState]
    regions: Mapping[str, RegionState]
    archives: Mapping[str, tuple[Path, ...]]  # tenant → archived copies, oldest first
    now: float
    # declared tenant → the file it belongs in; computed once here so plan() does not
    # build (and hash) the same Path again per tenant
    paths: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))

    def file(self, path: Path | str) -> FileState:
        p = path if isinstance(path, Path) else Path(path)
        return self.files.get(p) or FileState(p, exists=False)


def read_user_version(path: Path, busy_timeout: float = 5.0) -> FileState:
    """The file's ``user_version``, read the cheapest way that is always right."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return FileState(path, exists=False)
    except OSError as exc:
        return FileState(path, exists=True, error=f"cannot stat: {exc.strerror}")
    if stat.S_ISLNK(st.st_mode):
        return FileState(path, exists=True, error="is a symbolic link; refusing to follow it")
    if not stat.S_ISREG(st.st_mode):
        return FileState(path, exists=True, error="is not a regular file")
    base = os.fspath(path)
    wal = os.path.exists(base + "-wal")
    if not wal and not os.path.exists(base + "-journal"):
        try:
            return _from_header(path, _read_header(base))
        except OSError as exc:
            return FileState(path, exists=True, error=f"cannot read: {exc.strerror}")
    return _pragma_user_version(path, busy_timeout, wal)


def read_user_versions(paths: Iterable[Path], busy_timeout: float = 5.0
                       ) -> dict[Path, FileState]:
    """``read_user_version`` of many files, listing each directory once.

    Same answers as calling ``read_user_version`` per path: anything but a regular file
    with neither ``-wal`` nor ``-journal`` beside it (and any read error) is handed to it."""
    return _read_many(sorted((os.fspath(p), p) for p in paths), busy_timeout)


def _read_many(items: Iterable[tuple[str, Path]], busy_timeout: float) -> dict[Path, FileState]:
    listings: dict[str, frozenset[str] | None] = {}
    out: dict[Path, FileState] = {}
    for text, path in items:
        directory, name = os.path.split(text)
        if directory in listings:
            names = listings[directory]
        else:
            names = listings[directory] = _listing(directory)
        if names is None:
            out[path] = read_user_version(path, busy_timeout)
        elif name not in names:
            out[path] = FileState(path, exists=False)
        elif name + "-wal" in names or name + "-journal" in names:
            out[path] = read_user_version(path, busy_timeout)
        else:
            try:
                out[path] = _from_header(path, _read_header(text, regular_only=True))
            except OSError:  # not a regular file, unreadable, or changed since the listing:
                out[path] = read_user_version(path, busy_timeout)  # it says which, exactly
    return out


def _listing(directory: str) -> frozenset[str] | None:
    """Every name in ``directory``; None if it cannot be listed (the per-file path then
    says why for each file)."""
    try:
        return frozenset(os.listdir(directory or "."))
    except FileNotFoundError:
        return frozenset()
    except OSError:
        return None


def _read_header(path: str, regular_only: bool = False) -> bytes:
    # O_NOFOLLOW | O_NONBLOCK: a symlink or FIFO swapped in since the check fails here
    # instead of being followed or blocking
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if regular_only and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(path)  # any OSError: the caller classifies it
        return os.pread(fd, 100, 0)
    finally:
        os.close(fd)


def _from_header(path: Path, header: bytes) -> FileState:
    if not header:
        return FileState(path, exists=True, user_version=0)  # empty file = empty database
    if len(header) == 100 and header.startswith(MAGIC):
        return FileState(path, exists=True,
                         user_version=int.from_bytes(header[60:64], "big", signed=True))
    return FileState(path, exists=True, error="is not a SQLite database")


def _pragma_user_version(path: Path, busy_timeout: float, wal: bool) -> FileState:
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=busy_timeout)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return FileState(path, exists=True, error=f"cannot read as SQLite: {exc}", wal=wal)
    return FileState(path, exists=True, user_version=version, wal=wal)


def region_state(name: str, path: Path, data_dir: Path) -> RegionState:
    """Judge a region directory before anything is written into it."""
    if os.path.lexists(path):
        if not path.is_dir():
            return RegionState(name, path, f"region directory {path} exists but is not a "
                               "directory")
        if path.is_relative_to(data_dir):
            real, real_data = path.resolve(), data_dir.resolve()
            if not real.is_relative_to(real_data):
                return RegionState(name, path, f"region directory {path} resolves to {real}, "
                                   f"outside the data directory {real_data}; replace the "
                                   "symlink with a directory or declare an explicit path")
    return RegionState(name, path)


def list_archives(archive_dir: Path) -> dict[str, tuple[Path, ...]]:
    out: dict[str, list[Path]] = {}
    try:
        entries = sorted(os.scandir(archive_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return {}
    for e in entries:
        if not e.name.endswith(".db") or not e.is_file(follow_symlinks=False):
            continue
        name, sep, _stamp = e.name[:-3].rpartition("-")
        if sep:
            out.setdefault(name, []).append(Path(e.path))
    return {k: tuple(v) for k, v in out.items()}


def observe(desired: Desired, registry: Snapshot, now: float | None = None) -> Observed:
    """Read everything plan() needs. Touches no file except to read it."""
    timeout = desired.settings.busy_timeout
    declared = {spec.name: desired.tenant_path(spec.name, spec.region)
                for spec in desired.tenants.values()}
    # keyed by text: str hashes are cached and cheap, a fresh Path's are not
    by_text = {os.fspath(p): p for p in declared.values()}
    for row in registry.tenants.values():
        if row.status != "archived" and row.path not in by_text:
            p = Path(row.path)
            by_text.setdefault(os.fspath(p), p)
    archives = list_archives(desired.settings.archive_dir)
    for spec in desired.tenants.values():
        if spec.name in archives:
            p = archives[spec.name][-1]  # restore needs its version
            by_text.setdefault(os.fspath(p), p)
    files = _read_many(sorted(by_text.items()), timeout)
    regions = {name: region_state(name, r.path, desired.settings.data_dir)
               for name, r in desired.regions.items()}
    return Observed(
        registry=registry,
        files=MappingProxyType(files),
        regions=MappingProxyType(regions),
        archives=MappingProxyType(archives),
        now=time.time() if now is None else now,
        paths=MappingProxyType(declared),
    )
