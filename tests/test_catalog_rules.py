"""What the catalog accepts and refuses at load time (issue 11, items 4, 6, 7, 8, 10):
exact refusals of Python migrations (only what acts on the reconciler's connection, and
whatever would end the process), comment-only steps, versions the catalog does not
know, and checksums that ignore line endings and a BOM.

Every catalog is a real directory in tmp_path; every run uses a real SQLite file."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from reconciler import migrations, tenantdb
from reconciler import observe as observe_mod
from reconciler import status as status_mod
from reconciler.errors import Problem
from reconciler.plan import plan
from reconciler.state import JournalRow
from reconciler.versions import UnknownVersion
from tests import test_plan as plan_tests
from tests.conftest import run_all
from tests.test_migrations import OK, make, problems_of
from tests.test_plan import DATA


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


# --------------------------------------------------------------------------- item 4

UNKNOWN = (-1, -2, -2**31, 4, 2**31 - 1)  # user_version is a signed 32-bit integer


def set_version(path: Path, version: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS appdata (x)")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("version", UNKNOWN)
def test_catalog_steps_refuse_a_version_they_do_not_know(version: int) -> None:
    """``steps`` never slices with an unknown version (``migrations[-1:3]`` would be
    the last step alone)."""
    cat = plan_tests.catalog(3)
    with pytest.raises(UnknownVersion, match=f"schema version {version} "):
        cat.steps(version, 3)
    with pytest.raises(UnknownVersion):
        cat.steps(0, version)
    assert [m.version for m in cat.steps(1, 3)] == [2, 3]
    assert not cat.knows(version) and cat.knows(0) and cat.knows(3)


@pytest.mark.parametrize("version", UNKNOWN)
def test_observe_reads_a_negative_user_version_the_same_by_header_and_by_sqlite(
        tmp_path: Path, version: int) -> None:
    """The header fast path reads the 4 bytes at offset 60 as signed big-endian, as
    SQLite does: both routes agree on every value."""
    path = set_version(tmp_path / "t.db", version)
    assert observe_mod.read_user_version(path).user_version == version  # header
    (tmp_path / "t.db-journal").write_bytes(b"")  # a (cold) journal: ask SQLite
    assert observe_mod.read_user_version(path).user_version == version
    assert observe_mod.read_user_versions([path])[path].user_version == version


@pytest.mark.parametrize("version", UNKNOWN)
def test_a_file_at_a_version_the_catalog_does_not_know_is_reported_on_every_route(
        version: int) -> None:
    """Adopt, migrate (registered), relocate (region changed), restore from an archive,
    and the end of an interrupted relocation: each plans exactly one report naming the
    file and its version, and nothing that would touch the file or its row."""
    d = plan_tests.desired({"aaron": {"region": "eu"}})
    cat = plan_tests.catalog(3)
    journal = {"aaron": JournalRow("aaron", "relocate", "copied", str(DATA / "us/aaron.db"),
                                   str(DATA / "eu/aaron.db"), None, "", None)}
    routes = {
        "adopt": plan_tests.observed(files={"eu/aaron.db": version}),
        "migrate": plan_tests.observed([plan_tests.row("aaron", version=1)],
                                       files={"eu/aaron.db": version}),
        "relocate": plan_tests.observed([plan_tests.row("aaron", region="us", version=1)],
                                        files={"us/aaron.db": version}),
        "archive": plan_tests.observed([plan_tests.row("aaron", status="archived")],
                                       files={"_archive/aaron-1.db": version},
                                       archives={"aaron": ("aaron-1.db",)}),
        "resume": plan_tests.observed([plan_tests.row("aaron", region="us", version=1)],
                                      files={"eu/aaron.db": version}, journal=journal),
    }
    for route, obs in routes.items():
        p = plan(d, obs, cat)
        expected = ["relocate", "invalid"] if route == "resume" else ["invalid"]
        assert plan_tests.kinds(p) == expected, route
        report = p.actions[-1]
        assert f"is at schema version {version} (PRAGMA user_version)" in report.detail
        assert "aaron" in report.detail and report.status is None
        assert not any(a.kind.value in ("migrate", "adopt", "correct", "restore")
                       for a in p.actions), route
    rows = status_mod.rows(d, routes["migrate"], plan(d, routes["migrate"], cat), cat)
    assert [(r.tenant, r.version, r.pending) for r in rows] == [("aaron", version, "invalid")]


def test_migrating_a_file_whose_version_changed_to_an_unknown_one_since_planning_fails(
        tmp_path: Path) -> None:
    """The version is re-read under the write lock: a file set to -1 after it was
    planned is never migrated by indexing the catalog with -1."""
    cat = migrations.load(make(tmp_path, {"0001_a.sql": "CREATE TABLE a (x);\n",
                                          "0002_b.sql": "CREATE TABLE b (x);\n"}))
    path = set_version(tmp_path / "t.db", -1)
    result = tenantdb.migrate_file(path, cat, 2, 5.0)
    assert result.error is not None and "schema version -1" in result.error
    assert (result.from_version, result.to_version, result.applied) == (-1, -1, ())
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT type, name FROM sqlite_master").fetchall() == [
        ("table", "appdata")]
    assert conn.execute("PRAGMA user_version").fetchone() == (-1,)


# --------------------------------------------------------------------------- item 6

NO_OP_SQL = "-- nothing to do: INTEGER is already 64-bit\n/* kept for the numbering */\n"
NO_OP_PY = "def migrate(conn):\n    pass  # nothing to do on SQLite\n"


def test_comment_only_and_do_nothing_steps_are_no_ops_that_move_user_version(
        tmp_path: Path) -> None:
    """A ``.sql`` step holding only comments and a ``.py`` step whose ``migrate`` does
    nothing load, pass the dry run, and only move ``user_version``."""
    catalog = migrations.load(make(tmp_path, {"0001_a.sql": OK, "0002_widen.sql": NO_OP_SQL,
                                              "0003_noop.py": NO_OP_PY,
                                              "0004_b.sql": "INSERT INTO t VALUES (4);\n"}))
    assert [m.version for m in catalog.no_ops] == [2]
    assert catalog.migrations[1].statements == ()
    assert migrations.dry_run(catalog) == []
    conn = run_all(catalog, tmp_path / "t.db")
    assert conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall() == [
        ("table", "t", "CREATE TABLE t (a)")]
    assert conn.execute("SELECT a FROM t").fetchall() == [(4,)]
    assert conn.execute("PRAGMA user_version").fetchone() == (4,)


@pytest.mark.parametrize("text, where, says", [
    ("", (1, 1), "migration is empty"),
    ("\n   \n", (1, 1), "migration is empty"),
    ("-- fine\n/* never closed\n", (2, 1), "ends inside a /* comment"),
])
def test_a_blank_step_or_one_ending_inside_a_comment_is_still_refused(
        tmp_path: Path, text: str, where: tuple[int, int], says: str) -> None:
    found = problems_of(tmp_path, {"0001_a.sql": text})
    assert located(found) == [("0001_a.sql", *where)]
    assert says in found[0].message


# --------------------------------------------------------------------------- item 8

LF = b"CREATE TABLE t (\n  a TEXT\n);\nINSERT INTO t VALUES ('x');\n"


@pytest.mark.parametrize("variant", [
    LF, LF.replace(b"\n", b"\r\n"), LF.replace(b"\n", b"\r"), b"\xef\xbb\xbf" + LF,
    b"\xef\xbb\xbf" + LF.replace(b"\n", b"\r\n"),
])
def test_checksum_and_the_text_that_runs_ignore_line_endings_and_a_bom(
        tmp_path: Path, variant: bytes) -> None:
    """Every rendering of the same migration has the LF file's checksum (the raw SHA-256
    an older release recorded for an LF file), and runs the same statements, so the
    schema text stored in sqlite_master is the same too."""
    catalog = migrations.load(make(tmp_path, {"0001_a.sql": variant}))
    m = catalog.migrations[0]
    assert m.sha256 == hashlib.sha256(LF).hexdigest()
    assert [s.sql for s in m.statements] == ["CREATE TABLE t (\n  a TEXT\n);",
                                             "INSERT INTO t VALUES ('x');"]
    assert hashlib.sha256(variant).hexdigest() in m.accepts


def test_recorded_checksums_of_any_rendering_are_accepted_and_edits_are_not(
        tmp_path: Path) -> None:
    """A registry written by an older release (raw bytes of an LF, CRLF or BOM file)
    verifies against the file in any rendering; a changed statement does not."""
    catalog = migrations.load(make(tmp_path, {"0001_a.sql": LF.replace(b"\n", b"\r\n")}))
    for recorded in (LF, LF.replace(b"\n", b"\r\n"), b"\xef\xbb\xbf" + LF):
        sha = hashlib.sha256(recorded).hexdigest()
        assert migrations.verify_recorded(catalog, {1: ("a", sha)}, lambda v: 1) == []
    edited = hashlib.sha256(LF.replace(b"'x'", b"'y'")).hexdigest()
    [problem] = migrations.verify_recorded(catalog, {1: ("a", edited)}, lambda v: 1)
    assert "edited after it was applied: 1 tenant has version 1" in problem.message
    assert "line endings and a byte-order mark do not count" in problem.message
    # not in a git repository that holds the working directory: named with git -C
    assert (f"`git -C {tmp_path / 'migrations'} checkout <commit> -- 0001_a.sql`"
            in problem.hint)


def test_transaction_sql_is_refused_on_the_connection_and_its_cursors_only(
        tmp_path: Path) -> None:
    """``COMMIT`` run through the reconciler's connection or a cursor of it is refused
    at its line; run on a scratch database of the migration's own it is fine."""
    found = problems_of(tmp_path, {"0001_a.py": (
        "import sqlite3\n\ndef migrate(conn):\n"
        "    scratch = sqlite3.connect(':memory:')\n"
        "    scratch.execute('BEGIN')\n    scratch.execute('COMMIT')\n"
        "    cur = conn.cursor()\n    cur.execute('COMMIT')\n"
        "    conn.execute('ROLLBACK')\n")})
    assert located(found) == [("0001_a.py", 8, 5), ("0001_a.py", 9, 5)]
    assert [p.message for p in found] == ["statement `COMMIT` manages the transaction itself",
                                          "statement `ROLLBACK` manages the transaction itself"]
