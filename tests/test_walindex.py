"""walindex: the end of what SQLite published in a WAL-mode file, from its -shm."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from reconciler import walindex


def test_the_published_end_follows_each_commit_and_matches_the_wal_size(
        tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE t (x BLOB)")
        first = walindex.published_end(path)
        assert first == os.path.getsize(f"{path}-wal") and first is not None and first > 32
        conn.execute("INSERT INTO t VALUES (zeroblob(20000))")  # several pages
        end = walindex.published_end(path)
        assert end == os.path.getsize(f"{path}-wal") and end is not None and end > first
        assert (end - walindex.WAL_HEADER) % (walindex.FRAME_HEADER + 4096) == 0
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert walindex.published_end(path) == walindex.WAL_HEADER  # nothing published
    finally:
        conn.close()


def test_without_a_wal_index_it_says_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    sqlite3.connect(path).close()
    assert walindex.published_end(path) is None
    (tmp_path / "t.db-shm").write_bytes(b"\0" * 10)  # too short to hold a header
    assert walindex.published_end(path) is None
