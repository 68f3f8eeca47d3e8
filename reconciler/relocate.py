"""Relocate a tenant database between region directories (DESIGN §5, issue 3), and the
verified-copy and move-out-of-service primitives that archive and restore share.

Why: a tenant's file is the customer's only copy of their data, and data locality is
a legal promise. Moving it must never lose a committed row, never leave two files in
service, and survive ``SIGKILL`` at any instant.

The protocol (each phase is written to the registry's ``journal`` *before* it starts):

1. ``copy``   — status ``relocating`` (applications stop opening the file), then take
   the source's write lock (``BEGIN IMMEDIATE``: waits for in-flight writers through
   SQLite's own locking and keeps new ones out until the registry is switched), copy
   it with the backup API in steps into a temp file in the destination directory,
   fsync file and directory;
2. ``verify`` — ``integrity_check`` of the copy, and the same ``user_version``, schema,
   per-table row counts and content as the locked source: the same pages byte for byte
   when both main files hold all their content (what a backup-API copy of an unchanged
   source is), else every row compared in SQL; a mismatch rolls back (temp removed,
   source stays in service with its previous status);
3. ``rename`` — link the copy into place (never over an existing file);
4. switch — one power-safe registry transaction: region, path, status, and journal
   phase ``retire`` (with where the source goes);
5. ``retire`` — checkpoint the source and move it (with ``-wal``/``-shm``) into
   ``<data_dir>/_retired/``; only ``reconcile gc`` ever deletes anything there.

Resume rules (next run, from the journal phase plus what is on disk): before
``rename`` the temp copy was never in service, so it is discarded and the copy redone
(or, when the tenant no longer wants that destination, the relocation is rolled back);
from ``rename`` on, a copy at the destination that verifies equal to the source is
finished forward; one that differs (the source changed after the crash) is retired
and the copy redone; from ``retire`` on, only the retirement is left. When the desired
region changed while the relocation was interrupted, the tenant then relocates again,
in the same run, to where it is wanted now.

Applications must resolve the path from the registry before each transaction and,
holding their write lock, check the tenant is still ``active`` at that path (see the
README); then no committed write can land in a retired file.

Nothing here ever renames across filesystems: data crosses a device boundary only by
a verified copy, and the source is unlinked only after its copy is verified in place.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from reconciler import fleet, replication, tenantdb
from reconciler.actions import Action
from reconciler.context import OK, PENDING, Context, Outcome, crash_point, record
from reconciler.errors import PermanentError, RetryableError, is_busy
from reconciler.registry import JournalRow

# pages per backup step: at least 8 steps, so "during copy" is a real, observable state;
# steps of a few MB cost no more than one big copy, steps of 64 pages cost 1.6× (bench/)
COPY_STEP_PAGES = (64, 4096)
COPY_STEPS = 8
SIDECARS = ("-wal", "-shm")
# bytes of the 100-byte header that differ between a database and its backup-API copy
# while no content does: the journal mode (18–19: a copy is placed in rollback mode until
# it is in service), the change counter (24–27), version-valid-for and the SQLite
# version that last wrote it (92–99)
HEADER_VOLATILE = frozenset((18, 19, *range(24, 28), *range(92, 100)))
CHUNK = 1 << 20


# --------------------------------------------------------------------------- primitives


@dataclass(frozen=True)
class Fingerprint:
    """What "the same content" means: version, schema, row counts, a row checksum.

    ``digest`` is empty for a fingerprint taken with ``content=False``: the content is
    then compared row by row in SQL against the source itself (``verify_copy``)."""

    user_version: int
    tables: tuple[tuple[str, int], ...]  # (table, row count), sorted by name
    digest: str  # sha256 over schema and every row, in rowid / primary-key order
    schema: str = ""  # sha256 over the schema rows

    def differences(self, other: Fingerprint) -> list[str]:
        out = []
        if self.user_version != other.user_version:
            out.append(f"user_version {self.user_version} ≠ {other.user_version}")
        if self.schema != other.schema:
            out.append("schema differs")
        if self.tables != other.tables:
            out.append(f"row counts {dict(self.tables)} ≠ {dict(other.tables)}")
        if self.digest and other.digest and self.digest != other.digest and not out:
            out.append("content checksum differs")
        return out


def quote(name: str) -> str:
    """``name`` as an SQL identifier, always quoted (keywords such as ``order`` too)."""
    return '"' + name.replace('"', '""') + '"'


def _tables(schema: list[tuple[str, str, str, str | None]]) -> list[str]:
    # a virtual table's rows live in its shadow tables, which are compared as tables
    return [name for kind, name, _tbl, sql in schema
            if kind == "table" and not (sql or "").upper().startswith("CREATE VIRTUAL")]


def _key(conn: sqlite3.Connection, q: str, schema: str = "main") -> list[str] | None:
    """The columns that order and identify a table's rows: None means its rowid."""
    try:
        conn.execute(f"SELECT rowid FROM {schema}.{q} LIMIT 0")
        return None
    except sqlite3.OperationalError:  # WITHOUT ROWID: its primary key
        return [r[1] for r in sorted(conn.execute(f"PRAGMA {schema}.table_info({q})"),
                                     key=lambda r: r[5]) if r[5]]


def fingerprint(conn: sqlite3.Connection, content: bool = True) -> Fingerprint:
    """Fingerprint an open database (the caller makes sure nobody writes meanwhile).

    ``content=False`` skips the row checksum (the expensive part: every row through
    Python) and keeps version, schema and row counts."""
    h = hashlib.sha256()
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema "
                          "ORDER BY type, name").fetchall()
    schema_digest = hashlib.sha256(repr(schema).encode()).hexdigest()
    h.update(repr(schema).encode())
    counts = []
    for name in _tables(schema):
        q = quote(name)
        if not content:
            counts.append((name, int(conn.execute(f"SELECT count(*) FROM {q}").fetchone()[0])))
            continue
        key = _key(conn, q)
        if key is None:
            cursor = conn.execute(f"SELECT rowid, * FROM {q} ORDER BY rowid")
        else:
            cursor = conn.execute(f"SELECT * FROM {q} ORDER BY "
                                  + ", ".join(quote(c) for c in key))
        n = 0
        h.update(f"\x00table {name}\x00".encode())
        while batch := cursor.fetchmany(1000):
            n += len(batch)
            for row in batch:
                h.update(repr(row).encode())
                h.update(b"\x1e")
        counts.append((name, n))
    return Fingerprint(version, tuple(sorted(counts)), h.hexdigest() if content else "",
                       schema_digest)


def _rows_differ(conn: sqlite3.Connection, name: str) -> bool:
    """Does table ``name`` hold different rows in ``main`` and the attached ``src``?

    With equal row counts (checked by the caller) and unique keys, "every source row
    has a copy row with the same key and the same values" means the tables are equal.
    Values are compared by type and bytes (COLLATE BINARY), so neither a collation nor
    1 = 1.0 can hide a difference. All of it runs inside SQLite."""
    q = quote(name)
    cols = [r[1] for r in conn.execute(f"PRAGMA main.table_info({q})")]
    key = _key(conn, q)
    if key is None:
        # a column may be named like a rowid alias and shadow it: use one that is free
        taken = {c.lower() for c in cols}
        alias = next((a for a in ("rowid", "_rowid_", "oid") if a not in taken), None)
        if alias is None:
            return _digest_differs(conn, name, cols)
        on, missing = f"a.{alias} = b.{alias}", f"b.{alias} IS NULL"
    else:
        on = " AND ".join(f"a.{quote(c)} = b.{quote(c)}" for c in key)
        missing = f"b.{quote(key[0])} IS NULL"
    differs = " OR ".join(
        f"typeof(a.{c}) IS NOT typeof(b.{c}) OR a.{c} IS NOT b.{c} COLLATE BINARY"
        for c in (quote(col) for col in cols))
    sql = (f"SELECT 1 FROM src.{q} AS a LEFT JOIN main.{q} AS b ON {on} "
           f"WHERE {missing}{' OR ' + differs if differs else ''} LIMIT 1")
    return conn.execute(sql).fetchone() is not None


def _digest_differs(conn: sqlite3.Connection, name: str, cols: list[str]) -> bool:
    """Fallback when every rowid alias is a column name: hash both sides' rows in the
    order of all their columns (a total order: tied rows are identical)."""
    q = quote(name)
    order = ", ".join(quote(c) for c in cols)
    digests = []
    for schema in ("main", "src"):
        h = hashlib.sha256()
        for row in conn.execute(f"SELECT * FROM {schema}.{q} ORDER BY {order}"):
            h.update(repr(row).encode())
        digests.append(h.hexdigest())
    return digests[0] != digests[1]


def fingerprint_file(path: Path, busy_timeout: float, content: bool = True) -> Fingerprint:
    conn = tenantdb.connect(path, busy_timeout)
    try:
        return fingerprint(conn, content)
    finally:
        conn.close()


@contextlib.contextmanager
def write_locked(path: Path, busy_timeout: float) -> Iterator[sqlite3.Connection]:
    """Hold ``path``'s write lock: in-flight writers finish first, new ones wait.

    A writer still busy after the busy timeout is a ``RetryableError`` (try next pass)."""
    conn = tenantdb.connect(path, busy_timeout)
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise RetryableError(f"{path} stayed busy for {busy_timeout:g}s (an "
                                     f"application holds its write lock): {exc}") from exc
            raise
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def copy_into(source: Path, temp: Path, busy_timeout: float, during: str | None = None
              ) -> None:
    """Copy ``source`` into a fresh ``temp`` with the backup API, then fsync it.

    Reads through SQLite (so committed ``-wal`` content is included); the caller holds
    the source's write lock when writers may exist. ``during`` names the crash point
    reached after the first step of a copy that needs more than one."""
    tenantdb.fresh_file(temp)  # ours by name, never in service
    reader = tenantdb.connect(source, busy_timeout)
    try:
        target = sqlite3.connect(temp, isolation_level=None)
        try:
            def progress(_status: int, remaining: int, _total: int) -> None:
                if during is not None and remaining > 0:
                    crash_point(during)

            reader.backup(target, pages=_step_pages(source), progress=progress)
            # one file, complete on its own: the copy's journal mode is rollback until
            # it is in service (a -wal beside a temp file would be one more thing to move)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    finally:
        reader.close()
    tenantdb.fsync_file(temp)
    tenantdb.fsync_dir(temp.parent)


def _step_pages(source: Path) -> int:
    low, high = COPY_STEP_PAGES
    return max(low, min(high, os.path.getsize(source) // 4096 // COPY_STEPS))


def main_file_holds_content(path: Path, busy_timeout: float) -> bool:
    """Is every committed page of ``path`` in its main file, none only in its ``-wal``?

    The caller makes sure nobody writes meanwhile (it holds the write lock, or the file
    is out of service). Rollback-journal mode: yes, once a read has rolled back any hot
    journal. WAL mode: when a passive checkpoint backfilled every frame."""
    conn = tenantdb.connect(path, busy_timeout)
    try:
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()
        if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            return True
        busy, frames, backfilled = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return bool(busy == 0 and frames == backfilled)
    finally:
        conn.close()


def same_pages(copy: Path, source: Path) -> bool:
    """Do two database files hold the same pages, byte for byte (``HEADER_VOLATILE``
    aside)? Only meaningful when both main files hold all their content
    (``main_file_holds_content``); then equal pages are equal rows, schema and version.

    This is how a backup-API copy of an unchanged source verifies in the time it takes
    to read both files; anything else (a ``VACUUM``ed source, another page size)
    answers False and is compared row by row instead."""
    if os.path.getsize(copy) != os.path.getsize(source):
        return False
    with open(copy, "rb") as a, open(source, "rb") as b:
        head_a, head_b = a.read(100), b.read(100)
        if len(head_a) < 100 or any(head_a[i] != head_b[i] for i in range(100)
                                    if i not in HEADER_VOLATILE):
            return False
        while True:
            chunk = a.read(CHUNK)
            if chunk != b.read(CHUNK):
                return False
            if not chunk:
                return True


def verify_copy(copy: Path, expected: Fingerprint, busy_timeout: float,
                source: Path | None = None) -> None:
    """Raise ``PermanentError`` unless ``copy`` (a file of ours) is sound and equal to
    ``expected``.

    With ``source`` (still in place, and not written meanwhile: the caller holds its
    write lock or it is out of service) the content is compared with the source's —
    page by page when both main files hold all their content (``same_pages``), else
    row by row in SQL — and ``expected`` may be a ``content=False`` fingerprint."""
    conn = tenantdb.connect(copy, busy_timeout)
    try:
        bad = tenantdb.check(conn, "integrity_check")
        if bad is not None:
            raise PermanentError(f"copy {copy} failed integrity_check: {bad}")
        got = fingerprint(conn, content=source is None or bool(expected.digest))
        diff = expected.differences(got)
        if not diff and source is not None and not expected.digest and not (
                main_file_holds_content(source, busy_timeout)
                and main_file_holds_content(copy, busy_timeout) and same_pages(copy, source)):
            conn.execute("ATTACH DATABASE ? AS src", (f"{source.as_uri()}?mode=ro",))
            try:
                changed = [name for name, _n in got.tables if _rows_differ(conn, name)]
            finally:
                conn.execute("DETACH DATABASE src")
            if changed:
                diff.append(f"content differs in {', '.join(changed)}")
    finally:
        conn.close()
    if diff:
        raise PermanentError(f"copy {copy} does not match its source: {'; '.join(diff)}")


def set_journal_mode(path: Path, mode: str, busy_timeout: float) -> None:
    """Give a verified copy its source's journal mode (tenants run in WAL) before it is
    placed; closing the only connection leaves no ``-wal`` behind."""
    if mode.lower() not in ("wal", "delete", "truncate", "persist", "memory", "off"):
        mode = "wal"
    conn = tenantdb.connect(path, busy_timeout)
    try:
        conn.execute(f"PRAGMA journal_mode={mode}")
    finally:
        conn.close()
    tenantdb.fsync_file(path)


def link_into_place(temp: Path, dest: Path) -> None:
    """Atomically give a complete ``temp`` its final name, never over another file."""
    os.link(temp, dest)  # FileExistsError if anything is at dest: never overwrite
    os.unlink(temp)
    tenantdb.fsync_dir(dest.parent)


def stamp(now: float | None = None) -> str:
    """A sortable UTC timestamp without dashes (file names split on the last '-')."""
    t = time.time() if now is None else now
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f"{int(t % 1 * 1000):03d}Z"


def unstamp(text: str) -> float | None:
    """The epoch seconds of a ``stamp`` (None when ``text`` is not one)."""
    try:
        base = time.strptime(text[:15], "%Y%m%dT%H%M%S")
        millis = int(text[15:18]) if text.endswith("Z") and len(text) == 19 else None
    except ValueError:
        return None
    if millis is None:
        return None
    return calendar.timegm(base) + millis / 1000


def elapsed_ms(started_at: str) -> int:
    """Milliseconds since a registry timestamp (``utcnow()``): an operation's duration
    across the runs it took."""
    try:
        base = calendar.timegm(time.strptime(started_at[:19], "%Y-%m-%dT%H:%M:%S"))
        return max(0, int((time.time() - base - float(started_at[19:-1] or 0)) * 1000))
    except ValueError:
        return 0


def free_name(directory: Path, stem: str) -> Path:
    """``<directory>/<stem>-<stamp>.db`` that does not exist yet."""
    while True:
        candidate = directory / f"{stem}-{stamp()}.db"
        if not os.path.lexists(candidate):
            return candidate
        time.sleep(0.002)


def _same_device(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def quiesce(path: Path, busy_timeout: float) -> None:
    """Wait for in-flight writers, then checkpoint so the main file holds everything."""
    with write_locked(path, busy_timeout):
        pass
    conn = tenantdb.connect(path, busy_timeout)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()  # the last connection out removes an emptied -wal and the -shm


def move_out(source: Path, target: Path, busy_timeout: float, during: str) -> None:
    """Move a database out of service to ``target`` (with its ``-wal``/``-shm``).

    Idempotent, so a killed move is finished by calling it again. Same filesystem: a
    rename (main file first, then any sidecar that survived the checkpoint). Another
    filesystem: a verified copy next to ``target``, then the source files are unlinked
    — the only unlink of tenant data outside ``gc``, and only once a verified copy is
    in place."""
    tenantdb.ensure_dir(target.parent)
    if os.path.lexists(source):
        quiesce(source, busy_timeout)
        if _same_device(source.parent, target.parent):
            if os.path.lexists(target):
                raise PermanentError(f"cannot retire {source}: {target} already exists")
            os.rename(source, target)
            crash_point(during)
            for suffix in SIDECARS:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(f"{source}{suffix}", f"{target}{suffix}")
        else:
            expected = fingerprint_file(source, busy_timeout, content=False)
            if os.path.lexists(target):
                verify_copy(target, expected, busy_timeout, source)  # ours, from a killed run
            else:
                temp = target.with_name(f".{target.name}.tmp")
                copy_into(source, temp, busy_timeout)
                verify_copy(temp, expected, busy_timeout, source)
                link_into_place(temp, target)
            crash_point(during)
            os.unlink(source)
            for suffix in SIDECARS:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{source}{suffix}")
    else:
        # the main file already moved: carry over what a killed run left beside it
        for suffix in SIDECARS:
            leftover = Path(f"{source}{suffix}")
            if not os.path.lexists(leftover):
                continue
            if _same_device(source.parent, target.parent):
                os.rename(leftover, f"{target}{suffix}")
            else:  # the copy was verified before the source was unlinked
                os.unlink(leftover)
    tenantdb.fsync_dir(target.parent)
    tenantdb.fsync_dir(source.parent)


# --------------------------------------------------------------------------- relocation


def run(action: Action, ctx: Context) -> Outcome:
    journal = ctx.registry.journal_row(action.tenant)
    fleet.check_journal(ctx.desired, journal)  # its own fleet's files only
    if journal is not None and journal.action == "relocate":
        outcome = _resume(action, journal, ctx)
        row = ctx.registry.tenant(action.tenant)
        if action.path is None or row is None or Path(row.path) == action.path:
            return outcome
        # the desired region changed while the relocation was interrupted: it was
        # finished or rolled back above, and now goes where it is wanted, this pass
        if outcome.outcome == PENDING:
            return outcome
        return _start(action, ctx)
    if journal is not None:
        raise PermanentError(f"{action.tenant} has an unfinished {journal.action} "
                             f"(phase {journal.phase}); it is finished first")
    return _start(action, ctx)


def _start(action: Action, ctx: Context) -> Outcome:
    name = action.tenant
    row = ctx.registry.tenant(name)
    if row is None or action.path is None or action.region is None:
        raise PermanentError(f"relocating {name}: no registry row or no destination")
    source, dest = Path(row.path), action.path
    fleet.check(ctx.desired, source, f"relocating {name}: its file")
    fleet.check(ctx.desired, dest, f"relocating {name} to")
    if dest == source:
        raise PermanentError(f"relocating {name}: already at {dest}")
    if not os.path.lexists(source):
        raise PermanentError(f"relocating {name}: its file {source} is gone — nothing "
                             "was changed")
    # everything that can be checked before the tenant is touched is checked here, so a
    # bad destination is an error for this tenant that changes nothing
    tenantdb.ensure_dir(dest.parent)
    if os.path.lexists(dest):
        raise PermanentError(f"relocating {name}: a file already exists at {dest}; move it "
                             "away (or `reconcile restore` it) — nothing was changed")
    temp = dest.with_name(f".{dest.name}.relocating")
    # the temp itself is created only once the journal names it (copy_into): a kill
    # between the two would leave a file no later run accounts for
    tenantdb.prove_writable(dest.parent)
    crash_point("relocate:before-journal")
    previous = row.status if row.status != "relocating" else "active"  # restored on roll back
    detail = {"from_region": row.region, "to_region": action.region, "status": previous}
    with ctx.registry.durable_transaction():
        ctx.registry.journal_set(name, "relocate", "copy", source=str(source), dest=str(dest),
                                 temp=str(temp), detail=detail)
        ctx.registry.update_tenant(name, status="relocating")
    ctx.log.info("relocate", tenant=name, phase="copy", source=str(source), dest=str(dest))
    crash_point("relocate:before-copy")
    journal = ctx.registry.journal_row(name)
    assert journal is not None
    return _forward(action, journal, ctx)


def _resume(action: Action, journal: JournalRow, ctx: Context) -> Outcome:
    assert journal.source and journal.dest and journal.temp
    source, dest, temp = Path(journal.source), Path(journal.dest), Path(journal.temp)
    timeout = ctx.desired.settings.busy_timeout
    ctx.log.warning("relocate", tenant=action.tenant, resume=journal.phase,
                    source=str(source), dest=str(dest))
    if journal.phase == "retire":
        return _retire(action, journal, ctx)
    tenantdb.remove_quietly(temp)  # never in service; redone from the source if needed
    if journal.phase == "rename" and os.path.lexists(dest):
        switched: JournalRow | None = None
        with write_locked(source, timeout) as lock:
            expected = fingerprint(lock, content=False)
            try:
                verify_copy(dest, expected, timeout, source)
            except PermanentError as exc:
                # the source changed after the crash (or the copy is damaged): the copy
                # is stale — keep it aside, never delete it, and copy again
                stale = free_name(ctx.desired.settings.retired_dir, f"{action.tenant}-stale")
                ctx.log.warning("relocate", tenant=action.tenant, stale_copy=str(stale),
                                reason=str(exc))
                tenantdb.ensure_dir(stale.parent)
                move_out(dest, stale, timeout, "relocate:during-stale")
            else:
                switched = _switch(action, journal, lock, ctx)
        if switched is not None:
            crash_point("relocate:after-switch")
            return _retire(action, switched, ctx)
    if action.path != dest:
        return _roll_back(action, journal, ctx, "the desired destination changed")
    with ctx.registry.durable_transaction():
        ctx.registry.journal_set(action.tenant, "relocate", "copy")
    return _forward(action, journal, ctx)


def _forward(action: Action, journal: JournalRow, ctx: Context) -> Outcome:
    assert journal.source and journal.dest and journal.temp
    source, dest, temp = Path(journal.source), Path(journal.dest), Path(journal.temp)
    name, timeout = action.tenant, ctx.desired.settings.busy_timeout
    try:
        with write_locked(source, timeout) as lock:
            mode = str(lock.execute("PRAGMA journal_mode").fetchone()[0])
            copy_into(source, temp, timeout, during="relocate:during-copy")
            crash_point("relocate:after-copy")
            with ctx.registry.durable_transaction():
                ctx.registry.journal_set(name, "relocate", "verify")
            if (stopped := stopped_between(ctx, action, "relocate", "verify")) is not None:
                return stopped
            verify_copy(temp, fingerprint(lock, content=False), timeout, source)
            set_journal_mode(temp, mode, timeout)
            crash_point("relocate:after-verify")
            with ctx.registry.durable_transaction():
                ctx.registry.journal_set(name, "relocate", "rename")
            link_into_place(temp, dest)
            crash_point("relocate:after-rename")
            if (stopped := stopped_between(ctx, action, "relocate", "rename")) is not None:
                return stopped
            switched = _switch(action, journal, lock, ctx)
    except (PermanentError, RetryableError, OSError, sqlite3.Error) as exc:
        # before the switch the source is still the tenant's file: put it back in
        # service unless the copy is already in place (then the next run finishes)
        current = ctx.registry.journal_row(name)
        if current is not None and current.phase in ("copy", "verify"):
            _roll_back(action, journal, ctx, str(exc), record_it=False)
        raise
    crash_point("relocate:after-switch")
    if (stopped := stopped_between(ctx, action, "relocate", "retire")) is not None:
        return stopped
    return _retire(action, switched, ctx)


def stopped_between(ctx: Context, action: Action, kind: str, phase: str) -> Outcome | None:
    """At a journaled phase boundary: when ``ctx.stop_now()``, record that the action
    stopped there (the next pass resumes from the journal) and return that outcome."""
    if not ctx.stop_now():
        return None
    outcome = Outcome(action.tenant, kind, PENDING, action.from_version, action.to_version,
                      error=f"stopped at once before phase {phase} (second signal); the "
                      "next pass resumes from the journal", detail={"phase": phase})
    with ctx.registry.transaction():
        record(ctx, action, action.tenant, outcome, level="warning")
    return outcome


def _switch(action: Action, journal: JournalRow, lock: sqlite3.Connection, ctx: Context
            ) -> JournalRow:
    """Switch routing to the placed copy while the source is still write-locked; the
    same power-safe transaction journals the retirement that follows."""
    assert journal.source and journal.dest
    name, detail = action.tenant, journal.details()
    version = int(lock.execute("PRAGMA user_version").fetchone()[0])
    retired = free_name(ctx.desired.settings.retired_dir,
                        f"{name}-{detail.get('from_region', 'old')}")
    previous = detail.get("status", "active")
    with ctx.registry.durable_transaction():
        ctx.registry.update_tenant(name, region=detail.get("to_region", action.region),
                                   path=Path(journal.dest), schema_version=version,
                                   status="failed" if previous == "failed" else "active")
        ctx.registry.journal_set(name, "relocate", "retire",
                                 detail={**detail, "retired_path": str(retired)})
    current = ctx.registry.journal_row(name)
    assert current is not None
    return current


def _retire(action: Action, journal: JournalRow, ctx: Context) -> Outcome:
    assert journal.source and journal.dest
    detail = journal.details()
    source, retired = Path(journal.source), Path(detail["retired_path"])
    if os.path.lexists(journal.dest):  # issue 14: the new file is replicated first
        replication.handover(ctx.desired.settings, ctx.registry, action.tenant,
                             Path(journal.dest), source)
    move_out(source, retired, ctx.desired.settings.busy_timeout, "relocate:during-retire")
    resumed = action.detail if action.detail.startswith("resume") else None
    outcome = Outcome(action.tenant, "relocate", OK, action.from_version, action.to_version,
                      elapsed_ms(journal.started_at),
                      detail={"from_region": detail.get("from_region"),
                              "region": detail.get("to_region"), "path": journal.dest,
                              "retired": str(retired), "resumed": resumed})
    with ctx.registry.transaction():
        ctx.registry.journal_clear(action.tenant)
        record(ctx, action, action.tenant, outcome)
    return outcome


def _roll_back(action: Action, journal: JournalRow, ctx: Context, why: str, *,
               record_it: bool = True) -> Outcome:
    """Before ``rename``: drop the temp copy, source back in service as it was."""
    if journal.temp:
        tenantdb.remove_quietly(Path(journal.temp))
    previous = journal.details().get("status", "active")
    outcome = Outcome(action.tenant, "relocate", OK, action.from_version, action.to_version,
                      detail={"rolled_back": why, "path": journal.source})
    with ctx.registry.durable_transaction():
        ctx.registry.update_tenant(action.tenant, status=previous)
        ctx.registry.journal_clear(action.tenant)
        if record_it:
            record(ctx, action, action.tenant, outcome, level="warning")
    return outcome
