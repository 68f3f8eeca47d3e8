"""Every restore point of a lineage a relocation started is a whole database (issue 14/15).

A relocation (and a cross-host takeover) registers the tenant's new file with Litestream
and asks for a sync at once, so that the old file can be let go. Litestream 0.5.17, asked
to sync a file it registered a moment before (its first snapshot still being taken),
wrote a lineage whose restore points after the first checkpoint failed
``integrity_check`` — the latest included, so a restore after a disaster would have
failed (a fresh user found it after each move; measured here: points 14–16 of 16 with
the sync at once, none when the first sync came first). Every restore point of the new
lineage is restored and checked here, under steady writes through the router.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from reconciler import litestream
from reconciler.routing import Router
from tests.conftest import Fleet
from tests.e2e.backupkit import Daemon, declare, wait_for

ROWS, TRANSACTIONS = 50, 120  # enough -wal pages for Litestream's checkpoints to run
PAUSE = 0.12  # s between transactions: a restore point per second, over ~15 s


def lineage_url(fleet: Fleet) -> str:
    conn = sqlite3.connect(f"{fleet.central.as_uri()}?mode=ro", uri=True)
    try:
        [(url,)] = conn.execute("SELECT url FROM backup_lineages WHERE tenant = 'aaron' "
                                "AND ended_at IS NULL").fetchall()
        return str(url)
    finally:
        conn.close()


def test_every_restore_point_of_a_relocated_tenants_new_lineage_passes_integrity_check(
        fleet: Fleet, tmp_path: Path) -> None:
    replica = (tmp_path / "backups").as_uri()
    declare(fleet, {"aaron": {"region": "eu"}}, replica, interval="1s")
    daemon = Daemon(fleet)
    try:
        daemon.replicated(1)
        declare(fleet, {"aaron": {"region": "us"}}, replica, interval="1s")
        new = fleet.path("aaron", "us")
        wait_for(lambda: str(new) in daemon.control.databases(), what="aaron relocated")
        with Router(fleet.central) as router:
            for k in range(TRANSACTIONS):
                with router.connect("aaron.yoursaas.com") as db:
                    db.executemany(
                        "INSERT INTO notes (user_id, title, body) VALUES (NULL, ?, ?)",
                        [(f"t{k}-{i}", "b" * 200) for i in range(ROWS)])
                time.sleep(PAUSE)
        last = daemon.control.sync(new)
        url = lineage_url(fleet)
    finally:
        daemon.stop()
    assert last > 3
    bad = []
    for txid in range(1, last + 1):
        out = tmp_path / f"r{txid}.db"
        litestream.restore(url, out, None, txid=txid)
        conn = sqlite3.connect(out)
        try:
            if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                bad.append(txid)
        finally:
            conn.close()
    assert bad == [], f"restore points failing integrity_check: {bad} of {last}"
    conn = sqlite3.connect(tmp_path / f"r{last}.db")
    try:
        assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == ROWS * TRANSACTIONS
    finally:
        conn.close()
