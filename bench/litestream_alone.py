"""Litestream alone, no daemon: how long N ``litestream replicate`` processes take to
replicate a fleet of small WAL files for the first time, their descriptors and memory
— the floor under ``bench/backups.py``'s daemon figure, and the harness that found why
one process stalls at 10k (``too many open files`` once it holds ~limit / 6 databases).

    python -m bench.litestream_alone FILES PROCESSES [ROOT]

Files are split as the daemon splits them (``backup.shard_of``). Prints one line every
5 s (synced databases, descriptors per process, RSS) and a final summary; counts the
``too many open files`` lines Litestream logged. Removes its fleet when done.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench.backups import _rss_mb
from reconciler import litestream
from reconciler.backup import shard_of


def build(root: Path, files: int, processes: int) -> list[Path]:
    """``files`` one-row WAL databases and one config per process; the configs."""
    dbs, rep = root / "dbs", root / "replica"
    dbs.mkdir(parents=True)
    entries: list[list[dict[str, object]]] = [[] for _ in range(processes)]
    for i in range(files):
        name = f"t{i:05d}"
        path = dbs / f"{name}.db"
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT)")
        conn.execute("INSERT INTO notes (title) VALUES ('x')")
        conn.commit()
        conn.close()
        entries[shard_of(name, processes)].append(
            {"path": str(path), "replica": {"url": (rep / name).as_uri(),
                                            "sync-interval": "1s"}})
    configs = []
    for k, dbs_k in enumerate(entries):
        config = root / f"cfg{k}.yml"
        config.write_text(json.dumps({
            "socket": {"enabled": True, "path": str(root / f"ls{k}.sock")},
            "logging": {"level": "warn", "type": "json"}, "dbs": dbs_k}))
        configs.append(config)
    return configs


def run(files: int, processes: int, root: Path, timeout: float = 3600.0) -> str:
    if root.exists():
        shutil.rmtree(root)
    configs = build(root, files, processes)
    started = time.monotonic()
    logs = [(root / f"ls{k}.log").open("w") for k in range(processes)]
    procs = [subprocess.Popen(["nice", litestream.binary(), "replicate", "-no-expand-env",
                               "-config", str(c)], stdout=log, stderr=subprocess.STDOUT)
             for c, log in zip(configs, logs, strict=True)]
    summary = "did not finish"
    try:
        while time.monotonic() - started < timeout:
            time.sleep(5)
            synced = 0
            for k in range(processes):
                try:
                    dbs = litestream.Control(root / f"ls{k}.sock", timeout=60).databases()
                except Exception:
                    continue
                synced += sum(d.synced_at is not None for d in dbs.values())
            fds = [len(os.listdir(f"/proc/{p.pid}/fd")) for p in procs]
            rss = [_rss_mb(p.pid) for p in procs]
            print(f"{time.monotonic() - started:.0f}s synced={synced} fds={fds} "
                  f"rss={sum(rss):.0f}MB", flush=True)
            if synced >= files:
                summary = (f"{files} files, {processes} processes: all synced in "
                           f"{time.monotonic() - started:.0f} s; descriptors {fds}; RSS "
                           f"{[round(r) for r in rss]} MB ({sum(rss):.0f} MB)")
                break
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        for log in logs:
            log.close()
        emfile = sum((root / f"ls{k}.log").read_text().count("too many open files")
                     for k in range(processes))
        shutil.rmtree(root, ignore_errors=True)
    return f"{summary}; 'too many open files' logged {emfile} times"


if __name__ == "__main__":  # pragma: no cover
    where = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("/tmp/litestream-alone")
    print(run(int(sys.argv[1]), int(sys.argv[2]), where))
