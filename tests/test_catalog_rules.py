"""What the catalog accepts and refuses at load time (issue 11, items 4, 6, 7, 8, 10):
exact refusals of Python migrations (only what acts on the reconciler's connection, and
whatever would end the process), comment-only steps, versions the catalog does not
know, and checksums that ignore line endings and a BOM.

Every catalog is a real directory in tmp_path; every run uses a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reconciler import migrations
from reconciler.errors import Problem
from tests.test_migrations import OK, make, problems_of


def run_all(catalog: migrations.Catalog, db: Path) -> sqlite3.Connection:
    """Run every migration on ``db`` the way the reconciler does (one transaction each)."""
    conn = sqlite3.connect(db, isolation_level=None)
    for m in catalog.migrations:
        conn.execute("BEGIN IMMEDIATE")
        m.run(conn)
        conn.execute(f"PRAGMA user_version = {m.version}")
        conn.execute("COMMIT")
    return conn


def located(found: list[Problem]) -> list[tuple[str, int | None, int | None]]:
    return sorted((Path(p.file).name, p.line, p.column) for p in found)


# --------------------------------------------------------------------------- item 7


CLOSES_ITS_OWN = '''import csv, os

def migrate(conn):
    f = open(os.path.join(os.path.dirname(__file__), "countries.csv"), newline="")
    rows = list(csv.reader(f))
    f.close()
    cur = conn.cursor()
    cur.executemany("INSERT INTO countries VALUES (?, ?)", rows)
    cur.close()
    other = conn.execute("SELECT count(*) FROM countries")
    other.close()
    scratch = __import__("sqlite3").connect(":memory:")
    scratch.execute("CREATE TABLE x (a)")
    scratch.commit()
    scratch.close()
    with open(os.devnull) as g:
        g.close()
'''


def test_python_migration_may_close_its_own_files_cursors_and_connections(
        tmp_path: Path) -> None:
    """``f.close()`` on a CSV file, ``cur.close()`` on its own cursor, and commit/close
    on a database of its own are not the reconciler's connection: accepted and run."""
    d = make(tmp_path, {"0001_init.sql": "CREATE TABLE countries (code TEXT PRIMARY KEY, "
                                         "name TEXT);\n",
                        "countries.csv": "fr,France\nde,Germany\n",
                        "0002_seed_countries.py": CLOSES_ITS_OWN})
    catalog = migrations.load(d)
    assert migrations.dry_run(catalog) == []
    conn = run_all(catalog, tmp_path / "t.db")
    assert conn.execute("SELECT * FROM countries ORDER BY code").fetchall() == [
        ("de", "Germany"), ("fr", "France")]
    assert conn.execute("PRAGMA user_version").fetchone() == (2,)


@pytest.mark.parametrize("body, where, says", [
    ("    conn.close()\n", (3, 5), "`conn.close()` closes the reconciler's connection: "
     "`conn` is the reconciler's connection (migrate's parameter)"),
    ("    c = conn\n    c.commit()\n", (4, 5), "`c.commit()` commits the reconciler's "
     "transaction half-way through the migration: `c` is the reconciler's connection "
     "(bound to the connection at line 3)"),
    ("    with conn as c:\n        c.execute('CREATE TABLE t (a)')\n", (3, 5),
     "`with conn:` commits the reconciler's transaction when the block ends"),
    ("    cur = conn.cursor()\n    cur.connection.rollback()\n", (4, 5),
     "`cur.connection.rollback()` ends the reconciler's transaction"),
    ("    cur = conn.cursor()\n    cur.executescript('CREATE TABLE t (a);')\n", (4, 5),
     "`cur.executescript()` COMMITs the reconciler's transaction before running the script: "
     "`cur` is a cursor of the connection (line 3)"),
    ("    finish(conn)\n\ndef finish(db):\n    db.close()\n", (6, 5),
     "`db.close()` closes the reconciler's connection: `db` is the reconciler's connection "
     "(finish()'s parameter, passed the connection at line 3)"),
    ("    conn.isolation_level = None\n", (3, 5), "`conn.isolation_level = …` changes how "
     "the reconciler's connection handles its open transaction"),
])
def test_python_migration_acting_on_the_reconcilers_connection_is_refused_exactly(
        tmp_path: Path, body: str, where: tuple[int, int], says: str) -> None:
    """Each refusal names the call as written, its line and column, and why the name
    it acts on is the reconciler's connection."""
    found = problems_of(tmp_path, {"0001_a.py": "\ndef migrate(conn):\n" + body})
    assert located(found) == [("0001_a.py", *where)], "\n".join(map(str, found))
    assert says in found[0].message
    assert "BEGIN IMMEDIATE" in found[0].hint


def test_a_helper_given_something_else_may_close_it(tmp_path: Path) -> None:
    """The connection is followed into helpers only where it is passed."""
    migrations.load(make(tmp_path, {"0001_a.py": (
        "def done(x):\n    x.close()\n\ndef migrate(conn):\n    f = open(__file__)\n"
        "    done(f)\n    conn.execute('CREATE TABLE t (a)')\n")}))


# --------------------------------------------------------------------------- item 10


@pytest.mark.parametrize("source, where, what", [
    ("import sys\ndef migrate(conn):\n    sys.exit()\n", (3, 5), "`sys.exit()` raises "
     "SystemExit"),
    ("import os\ndef migrate(conn):\n    os._exit(0)\n", (3, 5), "`os._exit(0)` ends the "
     "reconciler's process at once"),
    ("from sys import exit as leave\ndef migrate(conn):\n    leave(0)\n", (3, 5), "`leave(0)`"),
    ("import os as o\ndef migrate(conn):\n    o.abort()\n", (3, 5), "`o.abort()` kills"),
    ("def migrate(conn):\n    exit()\n", (2, 5), "`exit()` raises SystemExit"),
    ("def migrate(conn):\n    quit(1)\n", (2, 5), "`quit(1)` raises SystemExit"),
    ("import os, signal\ndef migrate(conn):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
     (3, 5), "`os.kill(os.getpid(), signal.SIGKILL)` signals the reconciler's own process"),
    ("def migrate(conn):\n    if conn:\n        raise SystemExit(0)\n", (3, 9),
     "`raise SystemExit(0)` raises SystemExit"),
    ("import os\ndef migrate(conn):\n    os.execv('/bin/true', ['true'])\n", (3, 5),
     "replaces the reconciler's process"),
    ("import sys\nsys.exit(0)\ndef migrate(conn):\n    pass\n", (2, 1), "`sys.exit(0)`"),
])
def test_python_migration_that_would_end_the_process_is_refused_at_load(
        tmp_path: Path, source: str, where: tuple[int, int], what: str) -> None:
    """Refused by load (so by ``validate``, ``plan`` and ``apply``) with file:line:col,
    before its top-level code runs — ``sys.exit(0)`` at top level included."""
    found = problems_of(tmp_path, {"0001_a.sql": OK, "0002_b.py": source})
    assert located(found) == [("0002_b.py", *where)], "\n".join(map(str, found))
    assert what in found[0].message
    assert "must never end the reconciler" in found[0].message
    assert "raise an ordinary exception" in found[0].hint


def test_names_that_only_look_like_exits_are_accepted(tmp_path: Path) -> None:
    """A function of the file's own called ``exit``, and ``os.kill`` of another process,
    are not the process-ending calls."""
    catalog = migrations.load(make(tmp_path, {"0001_a.py": (
        "import os\n\ndef exit(conn):\n    conn.execute('CREATE TABLE t (a)')\n\n"
        "def migrate(conn):\n    exit(conn)\n    if False:\n        os.kill(12345, 0)\n")}))
    conn = run_all(catalog, tmp_path / "t.db")
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
