"""Whether a copy of a tenant database holds the same content as its source.

Why a module of its own: a tenant's file is the customer's only copy of their data, so
every operation that puts a copy in service in place of its source (relocation,
archive and unarchive, a move to another region) first proves the two equal. What "the
same content" means (``Fingerprint``: version, schema, row counts, a row checksum) and
the ways of proving it — page by page when both main files hold all their content,
else row by row inside SQLite against the attached source — are one concept, apart from
how the copy is made and moved (``relocate``).

Invariants:
* nothing here writes a database: fingerprints and comparisons only read (the caller
  makes sure nobody writes meanwhile: it holds the source's write lock, or the file is
  out of service);
* a copy that is unsound or differs in anything is a ``PermanentError`` naming what
  differs (``verify_copy``), never a silent pass: rows are compared by type and bytes,
  so neither a collation nor 1 = 1.0 hides a difference;
* ``same_pages`` ignores only the header bytes a backup-API copy changes without any
  content changing (``HEADER_VOLATILE``); anything else it cannot vouch for answers
  False and is compared row by row instead.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from reconciler import tenantdb
from reconciler.errors import PermanentError

# bytes of the 100-byte header that differ between a database and its backup-API copy
# while no content does: the journal mode (18–19: a copy is placed in rollback mode until
# it is in service), the change counter (24–27), version-valid-for and the SQLite
# version that last wrote it (92–99)
HEADER_VOLATILE = frozenset((18, 19, *range(24, 28), *range(92, 100)))
CHUNK = 1 << 20


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
