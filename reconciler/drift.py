"""Schema drift as observed state: each tenant's schema against the reference for its version.

Why: ``user_version`` only says which migrations ran (see ``schema``). This module is
the imperative side of drift detection: it builds the reference schema of every
version 0…latest by running the catalog on an in-memory database (through the same
``tenantdb.migrate_conn`` a rollout uses), reads tenant files' schemas read-only, and
decides which files need reading at all.

Cheap for the daemon: every file's *schema key* — its ``user_version``, SQLite's schema
cookie (header offset 40, bumped by every schema change) and its inode (a file swapped
in by a restore or a copy is a new inode) — is read by ``observe`` alongside the
version, from the same 100 header bytes (or from SQLite when a ``-wal``/``-journal``
sits beside the file). The registry remembers the key each file had when it was last
compared (``schema_keys``, one blob: comparing it with the observed keys is one C-level
dict comparison) and what the comparison found for drifted files (``schema_checks``);
only files whose key moved are read again. Reading a file hashes its ``sqlite_master``
first: a digest equal to the reference's (or to one already judged in this pass) needs
no PRAGMAs.

Invariants: tenant files are opened read-only (``mode=ro``) and never written; a file
that cannot be read is not reported as drift (and not remembered, so it is read again
next pass); the results are immutable values (``Check``); nothing here writes the
registry except ``record``, called by the pass holding the fleet lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from reconciler import context, readonly, schema, steprun, tenantdb
from reconciler.context import Context
from reconciler.errors import ReconcileError
from reconciler.migrations import Catalog
from reconciler.schema import Difference, Schema
from reconciler.state import Snapshot

T = TypeVar("T")


@dataclass(frozen=True)
class Reference:
    """The schema the catalog builds for one version, and its ``sqlite_master`` digest."""

    version: int
    schema: Schema
    digest: str


def references(catalog: Catalog, upto: int | None = None) -> tuple[Reference, ...]:
    """References for versions 0…``upto`` (default: latest), index = version. A migration
    that fails on an empty database (``reconcile validate`` reports it) ends the tuple
    before its version. Only versions some file is at are built: a Python migration runs
    here too (on the in-memory database), so one no tenant reached yet never runs."""
    # a step connection of its own: migrate_conn runs the steps on it exactly as on a
    # tenant (an in-memory database has no file to open a second connection beside)
    conn = steprun.open_step(None, 5.0)
    try:
        out = [Reference(0, schema.read(conn), schema.master_digest(conn))]
        for m in catalog.migrations[:catalog.latest if upto is None else max(0, upto)]:
            result = tenantdb.migrate_conn(conn, catalog, m.version)
            if result.error is not None or result.to_version != m.version:
                break
            out.append(Reference(m.version, schema.read(conn), schema.master_digest(conn)))
        return tuple(out)
    finally:
        conn.close()


@dataclass(frozen=True)
class Check:
    """One file compared with the reference for its version."""

    path: str
    key: bytes | None  # the file's schema key when observed (None: not known)
    version: int | None
    differences: tuple[Difference, ...] = ()
    error: str | None = None  # could not be read: not drift, not remembered

    @property
    def drifted(self) -> bool:
        return bool(self.differences)


# A schema key is 32 bytes: the schema cookie (header bytes 40…44: SQLite bumps it on
# every schema change), 16 zero bytes, the user_version (60…64), then the inode. The
# same bytes whether read from the header (an idle file) or asked of SQLite (a -wal
# beside it, whose header may lag): a file an application opens and closes is not
# compared again each time it switches. (Header bytes 44…60 — schema format, cache size,
# largest root page, encoding — were in the key once and made the two forms differ; no
# schema change leaves the cookie where it was.)
INODE = struct.Struct("<Q")
VERSION_AT = slice(20, 24)  # where a key holds the file's user_version
_BETWEEN = bytes(16)


def make_key(user_version: int, cookie: int, inode: int) -> bytes:
    """The schema key of a file whose versions were asked of SQLite."""
    return (cookie.to_bytes(4, "big", signed=cookie < 0) + bytes(16)
            + user_version.to_bytes(4, "big", signed=user_version < 0) + INODE.pack(inode))


def key_from_header(header: bytes, inode: int, _pack: Callable[[int], bytes] = INODE.pack
                    ) -> bytes:
    """The schema key of a file from its first 100 bytes and its inode."""
    return header[40:44] + _BETWEEN + header[60:64] + _pack(inode)


def read_key(path: str, busy_timeout: float, mode: str = "rw") -> bytes | None:
    """A file's schema key asked of SQLite (a WAL may hold a newer header); None if it
    cannot be read. ``mode`` "ro": changes no byte and creates no file (``readonly``)."""
    def both(conn: sqlite3.Connection) -> tuple[int, int]:
        return (int(conn.execute("PRAGMA user_version").fetchone()[0]),
                int(conn.execute("PRAGMA schema_version").fetchone()[0]))
    try:
        inode = os.stat(path).st_ino
        uv, cookie = reading(path, busy_timeout, mode, both)
    except (OSError, sqlite3.Error, ReconcileError):
        return None
    return make_key(uv, cookie, inode)


def reading(path: str, busy_timeout: float, mode: str,
            fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn`` on a connection that only reads ``path``: ``open_for_reading`` ("rw", the
    reconciler's passes), or ``readonly.read`` ("ro", the commands that must leave no
    file and no byte behind, e.g. ``plan`` and ``status``). Raises ``sqlite3.Error``,
    ``OSError`` or ``ReconcileError`` (``readonly``)."""
    if mode == "ro":
        return readonly.read(Path(path), fn, timeout=busy_timeout)
    conn = open_for_reading(path, busy_timeout)
    try:
        return fn(conn)
    finally:
        conn.close()


def open_for_reading(path: str, busy_timeout: float) -> sqlite3.Connection:
    """A connection that only ever reads ``path`` (never creates it).

    Opened ``mode=rw`` when allowed, as ``observe`` opens files: a read-only connection
    to a WAL database leaves ``-wal``/``-shm`` files behind when it closes, a read-write
    one that only reads removes them like any last connection. Without write access,
    ``mode=ro``."""
    uri = Path(path).as_uri()
    try:
        conn = sqlite3.connect(f"{uri}?mode=rw", uri=True, timeout=busy_timeout,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")  # reads: a bug here cannot write
        return conn
    except sqlite3.OperationalError:
        return sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=busy_timeout,
                               isolation_level=None, check_same_thread=False)


class Judge:
    """Compares files with their references; remembers verdicts by ``sqlite_master``
    digest for the length of one run (files built by the same migrations share one).
    Thread-safe enough for its use: a race computes a verdict twice, never a wrong one."""

    def __init__(self, refs: tuple[Reference, ...], busy_timeout: float,
                 mode: str = "rw") -> None:
        self.refs = refs
        self.busy_timeout = busy_timeout
        self.mode = mode
        self._seen: dict[tuple[str, int], tuple[Difference, ...]] = {}

    def check(self, path: str, key: bytes | None) -> Check:
        try:
            return reading(path, self.busy_timeout, self.mode,
                           lambda conn: self._check_on(conn, path, key))
        except (sqlite3.Error, OSError, ReconcileError) as exc:
            return Check(path, key, None, error=f"cannot read its schema: {exc}")

    def _check_on(self, conn: sqlite3.Connection, path: str, key: bytes | None) -> Check:
        conn.execute("BEGIN")  # version and schema from one consistent read
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version == 0:  # predates the catalog: 0001 is written for what it holds
                return Check(path, key, version)
            if not 0 < version < len(self.refs):
                return Check(path, key, version, error=f"v{version} has no reference schema")
            ref = self.refs[version]
            digest = schema.master_digest(conn)
            if digest == ref.digest:
                return Check(path, key, version)
            found = self._seen.get((digest, version))
            if found is None:
                found = self._seen[(digest, version)] = schema.compare(ref.schema,
                                                                       schema.read(conn))
            return Check(path, key, version, found)
        finally:
            conn.execute("COMMIT")


def check_all(judge: Judge, todo: Iterable[tuple[str, bytes | None]], workers: int,
              progress: Callable[[int, int], None] | None = None) -> list[Check]:
    """``judge.check`` for every (path, key), up to ``workers`` at once (SQLite releases
    the GIL while reading), in the order given; ``progress(done, total)`` after each."""
    items = list(todo)
    if workers <= 1 or len(items) < 8:
        out = []
        for i, (p, k) in enumerate(items, start=1):
            out.append(judge.check(p, k))
            if progress is not None:
                progress(i, len(items))
        return out
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(judge.check, p, k) for p, k in items]
        if progress is not None:
            for i, _ in enumerate(as_completed(futures), start=1):
                progress(i, len(items))
        return [f.result() for f in futures]


@dataclass(frozen=True)
class Observation:
    """What ``observe`` learns about drift in one pass."""

    drift: Mapping[str, tuple[Difference, ...]]  # path text → differences (drifted only)
    fresh: tuple[Check, ...]  # files compared this pass (for ``record``)
    # path text → schema key to remember from now on (None: what is remembered holds)
    remember: Mapping[str, bytes] | None = None


EMPTY = Observation(MappingProxyType({}), ())


def observe(snapshot: Snapshot, keys: Mapping[str, bytes],
            tenant_files: Callable[[], Mapping[str, str]], catalog: Catalog,
            busy_timeout: float, workers: int, recheck: bool = False,
            progress: Callable[[int, int], None] | None = None,
            mode: str = "rw") -> Observation:
    """Drift of the fleet's tenant files.

    ``keys``: path text → schema key of every usable file observed this pass;
    ``tenant_files()``: path text → tenant, the files to judge (asked only when some key
    moved, some file drifted, or ``recheck``); ``recheck``: compare every file, not only
    those whose key moved since it was remembered."""
    remembered = snapshot.schema_keys
    # the steady state: every file's key as remembered (one dict comparison in C)
    moved = () if keys == remembered else keys.items() - remembered.items()
    paths: Mapping[str, str] = MappingProxyType({})
    if moved or snapshot.drift or recheck:
        paths = tenant_files()
    todo = sorted(paths) if recheck else sorted(p for p, _k in moved if p in paths)
    drift: dict[str, tuple[Difference, ...]] = {}
    for p, text in snapshot.drift.items():
        if p in paths and keys.get(p) == remembered.get(p):
            drift[p] = tuple(Difference.from_json(d) for d in json.loads(text))
    fresh: tuple[Check, ...] = ()
    if todo:
        found = [keys.get(p) for p in todo]
        upto = catalog.latest if None in found else max(
            (int.from_bytes(k[VERSION_AT], "big", signed=True) for k in found if k is not None),
            default=0)
        judge = Judge(references(catalog, min(upto, catalog.latest)), busy_timeout, mode)
        fresh = tuple(check_all(judge, ((p, keys.get(p)) for p in todo), workers,
                                progress))
        for c in fresh:
            drift.pop(c.path, None)
            if c.drifted:
                drift[c.path] = c.differences
    remember: dict[str, bytes] | None = None
    stale = remembered.keys() - keys.keys() if remembered else set()
    if fresh or stale:
        remember = {p: k for p, k in remembered.items() if p not in stale}
        for c in fresh:
            if c.error is None and c.key is not None:
                remember[c.path] = c.key
            else:
                remember.pop(c.path, None)
    return Observation(MappingProxyType(drift), fresh, remember)


def to_json(diffs: Iterable[Difference]) -> str:
    return json.dumps([{k: v for k, v in d.as_json().items() if k != "summary"}
                       for d in diffs])


def record(ctx: Context, checks: Iterable[Check], remember: Mapping[str, bytes],
           tenants: Mapping[str, str]) -> None:
    """Remember this pass's comparisons in the registry (lock holder only), and log one
    ``drift`` event per tenant found drifted (``tenants``: path text → tenant).
    Files that could not be read are not remembered: they are read again next pass."""
    checks = [c for c in checks if c.error is None and c.key is not None
              and c.version is not None]
    with ctx.registry.transaction():
        ctx.registry.record_schema_checks(
            ((c.path, c.version or 0, to_json(c.differences)) for c in checks if c.drifted),
            (c.path for c in checks if not c.drifted), remember)
        for c in checks:
            if c.drifted and c.path in tenants:
                context.record(ctx, "drift", tenants[c.path], "reported", level="warning",
                               version=c.version, reason=schema.summary(c.differences),
                               differences=[d.summary() for d in c.differences])
