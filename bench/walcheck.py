"""What the unpublished-commit check costs a pass (issue 15; ``replication.unstick``).

Why: Litestream 0.5.17 can stop replicating a file, silently, after an application was
killed inside a commit; a pass notices by comparing, for every replicated file,
Litestream's last synced ``-wal`` offset with the end SQLite published, read from the
file's ``-shm`` (``walindex.published_end``: one open and a 96-byte read). The daemon
does it every pass up to ``daemon.WAL_CHECK_ALWAYS`` tenants and every
``WAL_CHECK_EVERY`` seconds above, so its cost per file decides that threshold.

Ours: ``published_end`` of N files. Baseline: ``os.stat`` of the same N files' ``-wal``
(the cheapest look at a file there is), in the same run, turn by turn. The ``-shm`` of
each file is a copy of a real one (a WAL database held open while it is copied): the
read is the same whatever the header says. Nothing here asserts.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from bench.timing import Contender, Row, measure, median
from reconciler import walindex


def _files(where: Path, n: int) -> list[Path]:
    model = where / "model.db"
    conn = sqlite3.connect(model, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    paths = []
    for i in range(n):
        p = where / f"t{i}.db"
        p.touch()
        shutil.copyfile(f"{model}-shm", f"{p}-shm")
        Path(f"{p}-wal").touch()
        paths.append(p)
    conn.close()
    return paths


def run(size: int, repeats: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-walcheck-") as tmp:
        paths = _files(Path(tmp), size)
        assert walindex.published_end(paths[0]) is not None

        def ours() -> None:
            for p in paths:
                walindex.published_end(p)

        def lean() -> None:
            for p in paths:
                os.stat(f"{p}-wal")
        t = measure([Contender("ours", ours), Contender("lean", lean)], max(repeats, 5))
    per = median(t["ours"]) / size
    return [Row(f"unpublished-commit check, {size:,} files", "walindex.published_end each",
                median(t["ours"]), "os.stat of each -wal", median(t["lean"]),
                note=f"{per * 1e6:.1f} µs per file: one pass's check of {size:,} tenants")]
