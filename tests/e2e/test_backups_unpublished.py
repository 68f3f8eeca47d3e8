"""A tenant's backups after its application died inside a commit (issue 14/15), end to end.

Litestream reads a tenant's -wal file, not SQLite's wal-index, so it can ship a commit
whose frames are written but not yet published. An application killed in that gap
(here held there by the LD_PRELOAD shim ``hold_wal_sync.c``, built with the system's C
compiler) leaves a commit that the replica has and that SQLite discards: Litestream's
own connection keeps the wal-index, and the next commit overwrites the frames. When
that commit had grown the file, Litestream 0.5.17 stops replicating it for good ("read
database page N: EOF"). The daemon must notice and restart that file's replication,
and the replica must then hold every row the application was told was committed.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from reconciler import litestream
from tests.conftest import Fleet
from tests.e2e.backupkit import Daemon, declare, status, wait_for, write
from tests.e2e.holdkit import application_held


def replica_titles(fleet: Fleet, out: Path) -> set[str]:
    """The (short) titles in a restore of aaron's replica as it is now."""
    conn = sqlite3.connect(f"{fleet.central.as_uri()}?mode=ro", uri=True)
    try:
        [(url,)] = conn.execute("SELECT url FROM backup_lineages WHERE tenant = 'aaron' "
                                "AND ended_at IS NULL").fetchall()
    finally:
        conn.close()
    for p in out.parent.glob(f"{out.name}*"):
        p.unlink()
    litestream.restore(url, out, None)
    conn = sqlite3.connect(f"{out.as_uri()}?mode=ro", uri=True)
    try:
        return {str(r[0]) for r in conn.execute("SELECT title FROM notes "
                                                "WHERE length(title) < 100")}
    finally:
        conn.close()


def restarted(fleet: Fleet) -> bool:
    """Whether ``reconcile history`` shows the daemon restarting aaron's replication."""
    out = fleet.run("history", "aaron", "--json")
    assert out.returncode == 0, out.stderr
    return '"restarted"' in out.stdout and '"backup"' in out.stdout


def test_a_file_litestream_stopped_on_after_its_writer_died_mid_commit_is_replicated_again(
        fleet: Fleet, tmp_path: Path) -> None:
    declare(fleet, {"aaron": {"region": "eu"}}, (tmp_path / "backups").as_uri(),
            interval="1s")
    daemon = Daemon(fleet)
    try:
        daemon.replicated(1)
        path = fleet.path("aaron", "eu")
        write(fleet, "aaron.yoursaas.com", "before")
        with application_held(path, tmp_path):
            before = daemon.control.databases()[str(path)].txid
            wait_for(lambda: daemon.control.databases()[str(path)].txid > before,
                     what="Litestream shipping the unpublished commit")
        write(fleet, "aaron.yoursaas.com", "after")  # overwrites the unpublished frames
        wait_for(lambda: restarted(fleet), 90, "the daemon restarting the replication")
        write(fleet, "aaron.yoursaas.com", "later")
        wait_for(lambda: {"before", "after", "later"} <= replica_titles(
            fleet, tmp_path / "restored.db"), what="the replica holding every row")

        def lag() -> float:
            row = next(r for r in status(fleet)["tenants"] if r["tenant"] == "aaron")
            return float(row["backup_lag"] if row["backup_lag"] is not None else 99)
        wait_for(lambda: lag() < 5, what="the backup lag back to normal")
        assert json.loads(fleet.run("status", "--json").stdout)["backups"]["replicated"] == 1
    finally:
        daemon.stop()
