"""No lost writes (issue 3): an application keeps inserting rows while the real
``reconcile`` relocates its tenant; every row the application saw committed is in the
relocated database.

The writer follows the protocol the README asks of applications: resolve the path
from the registry before each transaction, wait while the tenant is ``relocating``,
and, holding the file's write lock, check the registry still routes to that file
before committing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import Fleet
from tests.e2e.test_relocate_crash import content, seed

WRITER = r'''
import os, sqlite3, sys, time
central, tenant, stop = sys.argv[1], sys.argv[2], sys.argv[3]
reg = sqlite3.connect(f"file:{central}?mode=ro", uri=True, isolation_level=None)

def route():
    return reg.execute("SELECT path, status FROM tenants WHERE name = ?", (tenant,)).fetchone()

i = paths = 0
seen = set()
while not os.path.exists(stop):
    path, status = route()
    if status != "active":
        time.sleep(0.002)
        continue
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if route() != (path, "active"):  # moved while we waited for the lock
            conn.execute("ROLLBACK")
            continue
        conn.execute("INSERT INTO notes (title, body) VALUES (?, ?)", (f"w{i}", path))
        rowid = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        time.sleep(0.001 * (i % 20))  # the application's own work in its transaction
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:  # e.g. the file was retired under us
        print(f"retry {exc}", file=sys.stderr, flush=True)
        continue
    finally:
        conn.close()
    seen.add(path)
    print(f"{rowid} w{i} {path}", flush=True)
    i += 1
'''


def test_rows_committed_during_a_relocation_are_all_in_the_relocated_file(
        fleet: Fleet, tmp_path: Path) -> None:
    seed(fleet, {"aaron": "eu"}, notes=3000)
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(fleet.central), "aaron",
                               str(stop)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        time.sleep(0.5)  # writing to the eu file
        fleet.declare({"aaron": {"region": "us"}})
        moved = fleet.run("apply")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        time.sleep(0.5)  # and on to the us file
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err
    committed = [line.split() for line in out.splitlines()]
    old, new = str(fleet.path("aaron", "eu")), str(fleet.path("aaron", "us"))
    assert {c[2] for c in committed} == {old, new}, "the writer wrote to both files"
    assert sum(c[2] == old for c in committed) > 10 and sum(c[2] == new for c in committed) > 10
    final = {(int(rowid), title) for rowid, title, _path in committed}
    rows = set(fleet.rows(fleet.path("aaron", "us"),
                          "SELECT id, title FROM notes WHERE title LIKE 'w%'"))
    assert final <= rows, f"lost: {sorted(final - rows)[:10]}"
    # and nothing but what was committed: no write was duplicated or invented
    assert rows == final
    # the retired source holds exactly the rows committed before the switch
    retired = next((fleet.data / "_retired").glob("aaron-eu-*.db"))
    before_switch = {(int(r), t) for r, t, p in committed if p == old}
    assert set(fleet.rows(retired, "SELECT id, title FROM notes WHERE title LIKE 'w%'")) \
        == before_switch
    assert len(content(fleet, fleet.path("aaron", "us"))["notes"]) == 3000 + len(committed)
