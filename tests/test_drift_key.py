"""drift's schema key: one value for a file, whether read from its header or asked of
SQLite (a -wal beside it), so a file that switches is not compared again."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from reconciler import drift


def test_a_files_key_is_the_same_from_its_header_and_from_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT)")
    conn.execute("PRAGMA user_version = 3")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the header is current
    with open(path, "rb") as f:
        header = f.read(100)
    from_header = drift.key_from_header(header, os.stat(path).st_ino)
    asked = drift.read_key(str(path), 5.0)
    assert asked == from_header
    assert header[44:60] != bytes(16)  # the fields left out are not zero in the header
    conn.execute("CREATE INDEX notes_by_title ON notes (title)")  # a schema change
    assert drift.read_key(str(path), 5.0) != from_header
    conn.close()
