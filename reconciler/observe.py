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

``observe`` lists each region directory once (``os.scandir``, entry types included)
instead of three ``stat`` calls per tenant, so a converged fleet costs ``open`` +
``fstat`` + ``pread`` + ``close`` per file, and a file with a ``-wal`` beside it one
SQLite open and nothing more. The listing is a snapshot taken just before the headers
are read; a ``-wal`` or ``-journal`` that appears after it is seen on the next pass,
like any later change.
Files are kept by their path text and a ``FileState`` (and its ``Path``) is built only
when asked for: at 100k tenants, building them all costs more than reading the files.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import quote_from_bytes

from reconciler import drift as drift_keys
from reconciler import fleet as fleet_mod
from reconciler import readonly, replication
from reconciler.desired import Desired
from reconciler.migrations import Catalog
from reconciler.state import FileState as FileState
from reconciler.state import FileStates as FileStates
from reconciler.state import Observed as Observed
from reconciler.state import Read as Read
from reconciler.state import RegionState as RegionState
from reconciler.state import Snapshot

MAGIC = b"SQLite format 3\x00"
# characters a file name may hold and still be put in a file: URI as it is (RFC 3986
# unreserved): every tenant file name (a DNS label + ".db") is one. ``name.strip(_URI_SAFE)``
# is empty exactly when every character is one of them (a regex costs 5× more per file)
_URI_SAFE = string.ascii_letters + string.digits + "._~-"


def read_user_version(path: Path, busy_timeout: float = 5.0, mode: str = "rw") -> FileState:
    """The file's ``user_version``, read the cheapest way that is always right.

    ``mode``: how SQLite opens a file with a ``-wal`` or ``-journal`` beside it — "rw"
    in a pass (closing the last connection checkpoints a leftover ``-wal``, and a hot
    journal is rolled back), "ro" for the commands that must change nothing (a
    read-only connection never checkpoints, never rolls back)."""
    problem = _not_a_plain_file(path)
    if problem is not None:
        return problem
    base = os.fspath(path)
    wal = os.path.exists(base + "-wal")
    if not wal and not os.path.exists(base + "-journal"):
        try:
            return _from_header(path, _read_header(base))
        except OSError as exc:
            return FileState(path, exists=True, error=f"cannot read: {exc.strerror}")
    return _pragma_user_version(path, busy_timeout, wal, mode)


def _not_a_plain_file(path: Path) -> FileState | None:
    """The FileState of anything but an existing regular file; None for one."""
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
    return None


def read_user_versions(paths: Iterable[Path], busy_timeout: float = 5.0, mode: str = "rw"
                       ) -> dict[Path, FileState]:
    """``read_user_version`` of many files, listing each directory once.

    Same answers as calling ``read_user_version`` per path: anything but a regular file
    with neither ``-wal`` nor ``-journal`` beside it (and any read error) is handed to it."""
    paths = list(paths)
    states = FileStates(_read_many(sorted(os.fspath(p) for p in paths), busy_timeout, mode))
    return {p: states[p] for p in paths}


def _read_many(texts: Iterable[str], busy_timeout: float, mode: str = "rw",
               keys: dict[str, bytes] | None = None) -> dict[str, Read]:
    """Path text → what was read: a bare ``user_version`` (regular file, from its
    header: the common case, kept small), ``(user_version, wal)`` (read by SQLite), or
    the ``FileState`` of anything else (missing, unusable).

    ``keys``, when given, also receives each regular file's schema key (``drift``:
    schema cookie, ``user_version`` and inode) from the same header read, or from
    SQLite where a ``-wal``/``-journal`` sits beside the file."""
    if keys is not None:
        return _read_many_keyed(texts, busy_timeout, keys, mode)
    listings: dict[str, Listing | None] = {}
    out: dict[str, Read] = {}
    for text in texts:
        i = text.rfind("/")  # os.path.split, minus its cost: texts are normalised paths
        directory, name = (text[:i] or "/", text[i + 1:]) if i >= 0 else ("", text)
        if directory in listings:
            listing = listings[directory]
        else:
            listing = listings[directory] = _listing(directory)
        if listing is None:
            out[text] = read_user_version(Path(text), busy_timeout, mode)
        elif name in listing.side:  # a -wal or -journal beside it: only SQLite knows
            out[text] = _ask_sqlite(text, listing, name, busy_timeout, mode)
        elif name not in listing.names:
            out[text] = FileState(Path(text), exists=False)
        else:
            try:
                header = _read_header(text, regular_only=True)
            except OSError:  # not a regular file, unreadable, or changed since the listing:
                out[text] = read_user_version(Path(text), busy_timeout, mode)  # says which
                continue
            if len(header) == 100 and header.startswith(MAGIC):
                out[text] = int.from_bytes(header[60:64], "big", signed=True)
            else:
                out[text] = _from_header(Path(text), header)
    return out


def _read_many_keyed(texts: Iterable[str], busy_timeout: float,
                     keys: dict[str, bytes], mode: str = "rw") -> dict[str, Read]:
    """``_read_many`` that also fills ``keys`` (a copy of its loop, so the pass without
    drift checks pays nothing for them)."""
    pack_inode, between = drift_keys.INODE.pack, bytes(16)
    listings: dict[str, Listing | None] = {}
    out: dict[str, Read] = {}
    for text in texts:
        i = text.rfind("/")
        directory, name = (text[:i] or "/", text[i + 1:]) if i >= 0 else ("", text)
        if directory in listings:
            listing = listings[directory]
        else:
            listing = listings[directory] = _listing(directory)
        found: Read
        if listing is None:
            out[text] = found = read_user_version(Path(text), busy_timeout, mode)
        elif name in listing.side:
            out[text] = found = _ask_sqlite(text, listing, name, busy_timeout, mode, keys)
            if text in keys:
                continue
        elif name not in listing.names:
            out[text] = FileState(Path(text), exists=False)
            continue
        else:
            try:
                header, inode = _read_header_ino(text)
            except OSError:
                out[text] = found = read_user_version(Path(text), busy_timeout, mode)
            else:
                if len(header) == 100 and header.startswith(MAGIC):
                    out[text] = int.from_bytes(header[60:64], "big", signed=True)
                    # drift.key_from_header, inlined: this runs for every file every pass
                    keys[text] = header[40:44] + between + header[60:64] + pack_inode(inode)
                else:
                    out[text] = _from_header(Path(text), header)
                continue
        if not isinstance(found, FileState) or found.usable:  # asked of SQLite: so is its key
            key = drift_keys.read_key(text, busy_timeout, mode)
            if key is not None:
                keys[text] = key
    return out


@dataclass(frozen=True)
class Listing:
    """One directory, listed once per pass."""

    names: frozenset[str]  # every entry
    side: frozenset[str]  # names with a -wal or -journal beside them
    wal: frozenset[str]  # names with a -wal beside them
    irregular: frozenset[str]  # entries that are not regular files (as listed)
    uri: str | None  # "file://<directory>/" for SQLite, None if not absolute


def _ask_sqlite(text: str, listing: Listing, name: str, busy_timeout: float,
                mode: str = "rw", keys: dict[str, bytes] | None = None) -> Read:
    """``_pragma_user_version`` of a plain file, with what its directory's listing
    already knows (that it is a regular file, the URI of its directory): where
    applications hold files open this runs per file, beside SQLite's own open. Anything
    unusual goes to ``read_user_version``, which says exactly what it is. With ``keys``,
    the same connection also gives the file's schema key (``drift``)."""
    if listing.uri is None or name in listing.irregular or name.strip(_URI_SAFE):
        return read_user_version(Path(text), busy_timeout, mode)
    try:
        if keys is None:
            version = _sqlite_user_version(f"{listing.uri}{name}", busy_timeout, mode)
        else:
            version, cookie = _sqlite_versions(f"{listing.uri}{name}", busy_timeout, mode)
            keys[text] = drift_keys.make_key(version, cookie, os.stat(text).st_ino)
    except (sqlite3.DatabaseError, OSError):
        return read_user_version(Path(text), busy_timeout, mode)  # reports the error
    return version, name in listing.wal


def _listing(directory: str) -> Listing | None:
    """The listing of ``directory``; None if it cannot be listed (the per-file path then
    says why, per file). Entry types come with the listing (``d_type``) and are looked
    at only where files have a ``-wal`` or ``-journal`` beside them (SQLite will be
    asked about those): no ``lstat`` per file."""
    try:
        with os.scandir(directory or ".") as listed:
            entries = list(listed)
    except FileNotFoundError:
        return Listing(frozenset(), frozenset(), frozenset(), frozenset(), None)
    except OSError:
        return None
    names = [e.name for e in entries]
    wal = frozenset(n[:-4] for n in names if n.endswith("-wal"))
    side = wal.union(n[:-8] for n in names if n.endswith("-journal"))
    irregular = frozenset(e.name for e in entries
                          if not e.is_file(follow_symlinks=False)) if side else frozenset()
    uri = (f"file://{quote_from_bytes(os.fsencode(directory.rstrip('/')))}/"
           if directory.startswith("/") else None)
    return Listing(frozenset(names), side, wal, irregular, uri)


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


def _read_header_ino(path: str) -> tuple[bytes, int]:
    """``_read_header(path, regular_only=True)`` and the file's inode (same ``fstat``)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(path)
        return os.pread(fd, 100, 0), st.st_ino
    finally:
        os.close(fd)


def _from_header(path: Path, header: bytes) -> FileState:
    if not header:
        return FileState(path, exists=True, user_version=0)  # empty file = empty database
    if len(header) == 100 and header.startswith(MAGIC):
        return FileState(path, exists=True,
                         user_version=int.from_bytes(header[60:64], "big", signed=True))
    return FileState(path, exists=True, error="is not a SQLite database")


def _sqlite_user_version(uri: str, busy_timeout: float, mode: str = "rw") -> int:
    """``PRAGMA user_version`` of an existing file (``uri`` without a query; neither
    mode creates one; "ro" changes no byte, ``-shm`` included: ``readonly.user_version``)."""
    if mode == "ro":
        return readonly.user_version(uri, busy_timeout)
    conn = sqlite3.connect(f"{uri}?mode=rw", uri=True, timeout=busy_timeout)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _sqlite_versions(uri: str, busy_timeout: float, mode: str = "rw") -> tuple[int, int]:
    """(``user_version``, ``schema_version``) of an existing file, from one read
    (``uri`` without a query; "ro" changes no byte, as ``_sqlite_user_version``)."""
    def both(conn: sqlite3.Connection) -> tuple[int, int]:
        conn.execute("BEGIN")
        try:
            return (int(conn.execute("PRAGMA user_version").fetchone()[0]),
                    int(conn.execute("PRAGMA schema_version").fetchone()[0]))
        finally:
            conn.execute("COMMIT")
    if mode == "ro":
        return readonly.first(uri, busy_timeout, both)
    conn = sqlite3.connect(f"{uri}?mode=rw", uri=True, timeout=busy_timeout,
                           isolation_level=None)
    try:
        return both(conn)
    finally:
        conn.close()


def _pragma_user_version(path: Path, busy_timeout: float, wal: bool, mode: str = "rw"
                         ) -> FileState:
    try:
        version = _sqlite_user_version(path.as_uri(), busy_timeout, mode)
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


def observe(desired: Desired, registry: Snapshot, now: float | None = None, *,
            mode: str = "rw", catalog: Catalog | None = None, recheck: bool = False,
            progress: Callable[[int, int], None] | None = None) -> Observed:
    """Read everything plan() needs. Touches no file except to read it (``mode``: see
    ``read_user_version``; "ro" changes no byte).

    With ``catalog`` (and ``settings.drift`` not ``ignore``) tenant files' schemas are
    compared with their references too (``drift``): only files whose schema key moved
    since the registry remembered it, or every one with ``recheck``."""
    timeout = desired.settings.busy_timeout
    declared = desired.path_texts
    # a dict as an ordered set: files are read in tenant order (deterministic) with no
    # sort of 100k strings; each directory is listed once whatever the order
    texts = dict.fromkeys(declared.values())
    fence = fleet_mod.fence(desired)
    outside = []  # registered outside the fleet's directories: never opened (fleet.py)
    for row in registry.tenants.values():
        if row.path not in texts:
            if not fence.holds(row.path):
                outside.append(row)
            elif row.status != "archived":
                texts[os.fspath(Path(row.path))] = None  # normalised, as a Path key would be
    fleet = fleet_mod.observe_fleet(desired, registry, outside)
    for name, path in fleet.rerooted.items():
        if registry.tenants[name].status != "archived":
            texts[path] = None  # where this fleet keeps it: read there instead
    archives = list_archives(desired.settings.archive_dir)
    for spec in desired.tenants.values():
        if spec.name in archives:
            texts[os.fspath(archives[spec.name][-1])] = None  # restore needs its version
    checking = catalog is not None and desired.settings.drift != "ignore"
    keys: dict[str, bytes] | None = {} if checking else None
    files = FileStates(_read_many(texts, timeout, mode, keys))
    seen = drift_keys.EMPTY
    if catalog is not None and keys is not None:
        seen = drift_keys.observe(registry, keys, lambda: _tenant_files(desired, registry, files),
                                  catalog, timeout, desired.settings.rollout.parallel, recheck,
                                  progress, mode)
    regions = {name: region_state(name, r.path, desired.settings.data_dir)
               for name, r in desired.regions.items()}
    when = time.time() if now is None else now
    return Observed(
        registry=registry,
        files=files,
        regions=MappingProxyType(regions),
        archives=MappingProxyType(archives),
        now=when,
        declared=declared,
        fleet=fleet,
        drift=seen.drift,
        drift_checked=seen.fresh,
        drift_remember=seen.remember,
        backups=replication.observe(desired, registry, when),  # None: backups off
    )


def _tenant_files(desired: Desired, registry: Snapshot, files: FileStates) -> dict[str, str]:
    """Path text → tenant, for the files whose schema is judged: every usable file of a
    declared, not suspended tenant (where the registry has it, else where it belongs)."""
    out: dict[str, str] = {}
    declared = desired.path_texts
    for name, spec in desired.tenants.items():
        if spec.suspended:
            continue
        row = registry.tenants.get(name)
        text = row.path if row is not None and row.status != "archived" else declared[name]
        if files.version_of(text) is not None:
            out[text] = name
    return out
