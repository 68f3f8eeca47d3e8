"""Stand in for applications that keep their tenant databases open in WAL mode.

Why: in production an application holds a connection to every busy tenant, so the
``-wal`` and ``-shm`` files sit beside the database and the reconciler cannot trust the
header (it may lag the WAL). Without a holder, the first reader to close would
checkpoint and delete the ``-wal`` and the fleet would change under the benchmark.

Run as ``python -m bench.holder LISTFILE``: opens every file listed (one path a line),
writes one row through the WAL without checkpointing (so each ``-wal`` holds frames, as
a live application's does), prints ``ready`` and holds everything open until its
standard input closes. A file descriptor limit of 20k means ~5000 files per holder
(three descriptors each: database, ``-wal``, ``-shm``), so callers start several.
"""

from __future__ import annotations

import resource
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PER_PROCESS = 5000


def main(argv: Sequence[str]) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns = []
    for path in Path(argv[0]).read_text().splitlines():
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("UPDATE documents SET body = body WHERE id = 1")
        conns.append(conn)
    print("ready", flush=True)
    sys.stdin.read()
    return 0


class Holders:
    """Context manager: applications holding every file of ``paths`` open."""

    def __init__(self, paths: Sequence[str], workdir: Path) -> None:
        self.paths = paths
        self.workdir = workdir
        self.procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Holders:
        for i in range(0, len(self.paths), PER_PROCESS):
            listfile = self.workdir / f"holder-{i // PER_PROCESS}.txt"
            listfile.write_text("\n".join(self.paths[i:i + PER_PROCESS]) + "\n")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.holder", str(listfile)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                cwd=Path(__file__).resolve().parents[1]))
        for p in self.procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise SystemExit("a WAL holder process failed to open its files")
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in self.procs:
            p.wait(timeout=120)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
