"""Catalog rules through the real ``reconcile`` command (issue 11, items 4, 6, 7, 8, 10).

Each test reaches its state through more than one route and checks the whole tenant
file afterwards: every ``sqlite_master`` row, every row of every table, and
``user_version``."""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RECONCILE, Fleet
from tests.test_catalog_rules import CLOSES_ITS_OWN

SMALL = {"0001_a.sql": "CREATE TABLE a (x);\n", "0002_b.sql": "CREATE TABLE b (x);\n",
         "0003_c.sql": "CREATE TABLE c (x);\n"}


def dump(path: Path) -> dict[str, Any]:
    """Everything a tenant file holds: schema rows, table contents, user_version."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        master = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                              "ORDER BY type, name").fetchall()
        tables = {name: conn.execute(f'SELECT * FROM "{name}" ORDER BY rowid').fetchall()
                  for _t, name, _n, _s in master if _t == "table"}
        return {"user_version": conn.execute("PRAGMA user_version").fetchone()[0],
                "sqlite_master": master, "rows": tables}
    finally:
        conn.close()


def small_fleet(fleet: Fleet, tenants: dict[str, dict[str, Any]], **settings: Any) -> None:
    shutil.rmtree(fleet.migrations)
    for name, text in SMALL.items():
        fleet.write_migration(name, text)
    fleet.declare(tenants, **settings)


def foreign_file(path: Path, version: int) -> dict[str, Any]:
    """A file brought in from elsewhere: one table with data, at ``version``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE appdata (x)")
    conn.executemany("INSERT INTO appdata VALUES (?)", [(1,), ("two",)])
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    return {"user_version": version,
            "sqlite_master": [("table", "appdata", "appdata", "CREATE TABLE appdata (x)")],
            "rows": {"appdata": [(1,), ("two",)]}}


def set_version(path: Path, version: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


def at_v1(version: int) -> dict[str, Any]:
    """A tenant created at v1 whose user_version was then set to ``version``."""
    return {"user_version": version,
            "sqlite_master": [("table", "a", "a", "CREATE TABLE a (x)")], "rows": {"a": []}}


def reported(run: Any, path: Path, version: int) -> None:
    out = run.stdout + run.stderr
    assert run.returncode == 3, out
    assert f"{path} is at schema version {version} (PRAGMA user_version)" in out, out
    assert "Traceback" not in out


@pytest.mark.parametrize("version", [-1, 4, 2**31 - 1])
def test_file_at_a_version_the_migrations_do_not_know_is_reported_and_untouched(
        fleet: Fleet, version: int) -> None:
    """Three routes at once — adopting a file brought in from elsewhere, migrating a
    registered tenant whose file was set to that version, and relocating one — each
    reported by plan, apply and status, and each file left exactly as it was."""
    small_fleet(fleet, {"pinned": {"region": "eu", "schema": 1},
                        "mover": {"region": "eu", "schema": 1}})
    assert fleet.run("apply").returncode == 0
    newcomer = fleet.path("newcomer", "eu")
    want_newcomer = foreign_file(newcomer, version)
    for name in ("pinned", "mover"):
        set_version(fleet.path(name, "eu"), version)
    small_fleet(fleet, {"newcomer": {"region": "eu"}, "pinned": {"region": "eu"},
                        "mover": {"region": "us"}})
    registry_before = fleet.registry("SELECT name, region, path, schema_version, status "
                                     "FROM tenants ORDER BY name")

    dry = fleet.run("--dry-run")
    for name in ("newcomer", "pinned", "mover"):
        assert f"{fleet.path(name, 'eu')} is at schema version {version}" in dry.stdout
    assert "to migrate" in dry.stdout and "0 to migrate, 0 to relocate" in dry.stdout
    run = fleet.run("apply")
    for name in ("newcomer", "pinned", "mover"):
        reported(run, fleet.path(name, "eu"), version)
    # cli-ux: status opens with the fleet's numbers; --all lists every tenant's row
    status = fleet.run("status", "--all")
    assert status.returncode == 2
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()
            if line.startswith(("  mover ", "  newcomer ", "  pinned "))}
    assert {name: row[-1] for name, row in rows.items()} == dict.fromkeys(
        ("mover", "newcomer", "pinned"), "invalid")

    assert dump(newcomer) == want_newcomer
    assert dump(fleet.path("pinned", "eu")) == at_v1(version)
    assert dump(fleet.path("mover", "eu")) == at_v1(version)
    assert not fleet.path("mover", "us").exists()
    assert fleet.registry("SELECT name, region, path, schema_version, status FROM tenants "
                          "ORDER BY name") == registry_before
    assert ("newcomer",) not in fleet.registry("SELECT name FROM tenants")


@pytest.mark.parametrize("version, reason", [
    (-2, "which no migration produces: the migrations know 0…3"),
    (-2**31, "which no migration produces"),
    (2**31 - 1, "beyond the latest migration v3: it belongs to a newer schema"),
])
def test_restore_of_a_copy_at_an_unknown_version_says_the_true_reason(
        fleet: Fleet, tmp_path: Path, version: int, reason: str) -> None:
    """``restore --from`` and the automatic restore of an archived copy both refuse it,
    with the real reason (a negative version is not "a newer schema"), creating nothing."""
    small_fleet(fleet, {"gone": {"region": "eu"}, "kept": {"region": "eu"}},
                prune="archive")
    assert fleet.run("apply").returncode == 0
    fleet.path("gone", "eu").unlink()
    backup = tmp_path / "backup.db"
    want = foreign_file(backup, version)

    run = fleet.run("restore", "gone", "--from", str(backup))
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert f"{backup} is at schema version {version} (PRAGMA user_version), {reason}" in out
    assert "not restored" in out and "Traceback" not in out
    assert not fleet.path("gone", "eu").exists()
    assert dump(backup) == want
    assert sorted(p.name for p in (fleet.data / "eu").iterdir()) == ["kept.db"]

    # the other route: kept is archived (prune), its copy set to the version, redeclared
    small_fleet(fleet, {"gone": {"region": "eu"}}, prune="archive")
    assert fleet.run("apply").returncode == 3
    [archived] = [p for p in fleet.data.rglob("kept-*.db")]
    set_version(archived, version)
    archived_before = dump(archived)
    small_fleet(fleet, {"gone": {"region": "eu"}, "kept": {"region": "eu"}},
                prune="archive")
    run = fleet.run("apply")
    reported(run, archived, version)
    assert "not restored, nothing created" in run.stdout
    assert not fleet.path("kept", "eu").exists()
    assert dump(archived) == archived_before == {**at_v1(version), "sqlite_master": [
        ("table", n, n, f"CREATE TABLE {n} (x)") for n in "abc"],
        "rows": {"a": [], "b": [], "c": []}}


def test_comment_only_step_is_a_no_op_for_fresh_and_existing_tenants(fleet: Fleet) -> None:
    """validate notes the comment-only step and exits 0; a tenant created 0→4 in one
    pass and one migrated 1→4 later end with the same schema and rows, at v4."""
    shutil.rmtree(fleet.migrations)
    fleet.write_migration("0001_a.sql", "CREATE TABLE a (x INTEGER);\nINSERT INTO a VALUES (1);\n")
    fleet.write_migration("0002_widen.sql", "-- nothing to do: INTEGER is already 64-bit\n")
    fleet.write_migration("0003_noop.py", "def migrate(conn):\n    pass\n")
    fleet.write_migration("0004_b.sql", "CREATE TABLE b (y);\n")
    fleet.declare({"fresh": {"region": "eu"}, "older": {"region": "eu", "schema": 1}})

    validate = fleet.run("validate")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert (f"note: {fleet.migrations / '0002_widen.sql'}: holds only comments — a no-op "
            "step that moves user_version to 2") in validate.stdout
    assert fleet.run("apply").returncode == 0
    fleet.declare({"fresh": {"region": "eu"}, "older": {"region": "eu"}})
    run = fleet.run("apply")
    assert run.returncode == 0, run.stdout + run.stderr
    want = {"user_version": 4, "sqlite_master": [
        ("table", "a", "a", "CREATE TABLE a (x INTEGER)"), ("table", "b", "b",
                                                             "CREATE TABLE b (y)")],
        "rows": {"a": [(1,)], "b": []}}
    assert dump(fleet.path("fresh", "eu")) == want
    assert dump(fleet.path("older", "eu")) == want
    assert fleet.registry("SELECT version, name FROM migrations ORDER BY version") == [
        (1, "a"), (2, "widen"), (3, "noop"), (4, "b")]




def test_python_step_closing_its_own_file_and_cursor_runs_for_fresh_and_existing_tenants(
        fleet: Fleet) -> None:
    """``f.close()`` and ``cur.close()`` are accepted by validate, and the step runs on a
    tenant created in one pass and on one that was at v1."""
    shutil.rmtree(fleet.migrations)
    fleet.write_migration("0001_init.sql",
                          "CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT);\n")
    fleet.write_migration("countries.csv", "fr,France\nde,Germany\n")
    fleet.declare({"older": {"region": "eu"}})
    assert fleet.run("apply").returncode == 0
    fleet.write_migration("0002_seed_countries.py", CLOSES_ITS_OWN)
    fleet.declare({"older": {"region": "eu"}, "fresh": {"region": "us"}})
    validate = fleet.run("validate")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    run = fleet.run("apply")
    assert run.returncode == 0, run.stdout + run.stderr
    want = {"user_version": 2, "sqlite_master": [
        ("index", "sqlite_autoindex_countries_1", "countries", None),
        ("table", "countries", "countries",
         "CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT)")],
        "rows": {"countries": [("fr", "France"), ("de", "Germany")]}}
    assert dump(fleet.path("older", "eu")) == want
    assert dump(fleet.path("fresh", "us")) == want


@pytest.mark.parametrize("name, source, where, says", [
    ("0004_close.py", "def migrate(conn):\n    db = conn\n    db.close()\n", ":3:5",
     "`db.close()` closes the reconciler's connection: `db` is the reconciler's connection "
     "(bound to the connection at line 2)"),
    ("0004_leave.py", "import os\n\ndef migrate(conn):\n    os._exit(0)\n", ":4:5",
     "`os._exit(0)` ends the reconciler's process at once"),
    ("0004_stop.py", "import sys\n\ndef migrate(conn):\n    sys.exit()\n", ":4:5",
     "`sys.exit()` raises SystemExit"),
    ("0004_raise.py", "def migrate(conn):\n    raise SystemExit\n", ":2:5",
     "`raise SystemExit` raises SystemExit"),
])
def test_python_step_acting_on_the_connection_or_ending_the_process_is_refused_everywhere(
        fleet: Fleet, name: str, source: str, where: str, says: str) -> None:
    """validate, plan and apply all exit 1 naming file:line:col; no tenant — neither
    one created fresh nor one already at v3 — is touched."""
    fleet.declare({"aaron": {"region": "eu"}})
    assert fleet.run("apply").returncode == 0
    before = dump(fleet.path("aaron", "eu"))
    fleet.write_migration(name, source)
    fleet.declare({"aaron": {"region": "eu"}, "newbie": {"region": "us"}})
    for args in (("validate",), ("--dry-run",), ("apply",)):
        run = fleet.run(*args)
        out = run.stdout + run.stderr
        assert run.returncode == 1, (args, out)
        assert f"{fleet.migrations / name}{where}: {says}" in out, out
        assert "Traceback" not in out
    assert dump(fleet.path("aaron", "eu")) == before
    assert before["user_version"] == 3
    assert not fleet.path("newbie", "us").exists()


# --------------------------------------------------------------------------- item 8

MULTILINE = ("0001_a.sql", "CREATE TABLE a (\n  x INTEGER,\n  y TEXT\n);\n"
             "INSERT INTO a VALUES (1, 'one');\n")
SECOND = ("0002_b.sql", "-- second step\nCREATE VIEW b AS\n  SELECT x\n  FROM a;\n")


def git(root: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "HOME": str(root), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["git", *args], cwd=root, env=env, text=True, capture_output=True,
                          check=True)
    return done.stdout


def lf_fleet_in_git(fleet: Fleet) -> dict[str, Any]:
    """A fleet whose migrations (LF) are committed to git and applied to aaron."""
    shutil.rmtree(fleet.migrations)
    for name, text in (MULTILINE, SECOND):
        fleet.write_migration(name, text)
    fleet.declare({"aaron": {"region": "eu"}})
    git(fleet.root, "init", "-q")
    git(fleet.root, "config", "core.autocrlf", "false")
    (fleet.root / ".gitignore").write_text("data/\n")
    git(fleet.root, "add", ".")
    git(fleet.root, "commit", "-qm", "fleet")
    first = fleet.run("apply")
    assert first.returncode == 0, first.stdout + first.stderr
    return dump(fleet.path("aaron", "eu"))


def test_crlf_or_bom_checkout_of_applied_migrations_is_not_an_edit(fleet: Fleet) -> None:
    """Three routes to the same migrations with other bytes — a checkout under
    core.autocrlf=true (CRLF), a BOM added by an editor, and a registry written by an
    older release (raw-bytes checksums of a CRLF checkout) — all pass validate and apply;
    a tenant created from them has exactly the schema text and rows of one created from
    the LF files."""
    aaron = lf_fleet_in_git(fleet)
    assert aaron["sqlite_master"] == [
        ("table", "a", "a", "CREATE TABLE a (\n  x INTEGER,\n  y TEXT\n)"),
        ("view", "b", "b", "CREATE VIEW b AS\n  SELECT x\n  FROM a")]
    assert aaron["rows"] == {"a": [(1, "one")]} and aaron["user_version"] == 2

    # route 1: the same commit checked out with CRLF line endings
    git(fleet.root, "config", "core.autocrlf", "true")
    shutil.rmtree(fleet.migrations)
    git(fleet.root, "checkout", "--", "migrations")
    crlf = (fleet.migrations / "0001_a.sql").read_bytes()
    assert b"\r\n" in crlf
    fleet.declare({"aaron": {"region": "eu"}, "bob": {"region": "us"}})
    for args in (("validate",), ("apply",)):
        run = fleet.run(*args)
        assert run.returncode == 0, (args, run.stdout + run.stderr)
    assert dump(fleet.path("bob", "us")) == aaron == dump(fleet.path("aaron", "eu"))

    # route 2: a byte-order mark in front of an applied migration
    (fleet.migrations / "0002_b.sql").write_bytes(
        b"\xef\xbb\xbf" + (fleet.migrations / "0002_b.sql").read_bytes())
    fleet.declare({"aaron": {"region": "eu"}, "bob": {"region": "us"},
                   "carol": {"region": "eu"}})
    run = fleet.run("apply")
    assert run.returncode == 0, run.stdout + run.stderr
    assert dump(fleet.path("carol", "eu")) == aaron

    # route 3: the registry holds raw-bytes checksums of the CRLF files (an older
    # release applied them from this checkout); the files are LF again
    conn = sqlite3.connect(fleet.central)
    conn.execute("UPDATE migrations SET sha256 = ? WHERE version = 1",
                 (hashlib.sha256(crlf).hexdigest(),))
    conn.commit()
    conn.close()
    git(fleet.root, "config", "core.autocrlf", "false")
    shutil.rmtree(fleet.migrations)
    git(fleet.root, "checkout", "--", "migrations")
    assert b"\r" not in (fleet.migrations / "0001_a.sql").read_bytes()
    for args in (("validate",), ("--dry-run",), ("apply",)):
        run = fleet.run(*args)
        assert run.returncode == 0, (args, run.stdout + run.stderr)
    for name, region in (("aaron", "eu"), ("bob", "us"), ("carol", "eu")):
        assert dump(fleet.path(name, region)) == aaron


def test_a_real_edit_is_refused_and_the_hint_restores_it_under_autocrlf(fleet: Fleet) -> None:
    """An applied migration really edited (in an LF and in a CRLF checkout) is refused
    naming the path from the project folder; the printed `git checkout <commit> -- …`,
    run as printed under core.autocrlf=true, brings it back and the fleet runs again."""
    aaron = lf_fleet_in_git(fleet)
    commit = git(fleet.root, "rev-parse", "HEAD").strip()
    git(fleet.root, "config", "core.autocrlf", "true")
    for edit in (b"INSERT INTO a VALUES (2, 'two');\n", b"INSERT INTO a VALUES (2, 'two');\r\n"):
        path = fleet.migrations / "0001_a.sql"
        path.write_bytes(path.read_bytes() + edit)
        run = fleet.run("apply")
        out = run.stdout + run.stderr
        assert run.returncode == 1, out
        assert "0001_a.sql: edited after it was applied: 1 tenant has version 1" in out
        assert "`git log -- migrations/0001_a.sql` lists its commits" in out
        hint = "git checkout <commit> -- migrations/0001_a.sql"
        assert f"`{hint}`" in out
        git(fleet.root, *hint.replace("<commit>", commit).split()[1:])
        assert b"\r\n" in path.read_bytes()  # autocrlf brought CRLF back: still accepted
        run = fleet.run("apply")
        assert run.returncode == 0, run.stdout + run.stderr
        assert dump(fleet.path("aaron", "eu")) == aaron


def test_the_edit_hint_works_as_printed_from_outside_the_repository(fleet: Fleet) -> None:
    """Run from another folder (``-c path/to/tenants.yaml``), the hint names the
    migrations folder with ``git -C`` so that the printed command, run where it was
    printed, restores the file."""
    aaron = lf_fleet_in_git(fleet)
    commit = git(fleet.root, "rev-parse", "HEAD").strip()
    path = fleet.migrations / "0002_b.sql"
    path.write_text(path.read_text().replace("SELECT x", "SELECT x, y"))
    outside = fleet.root.parent
    cmd = [RECONCILE, "-c", str(fleet.config), "apply"]
    run = subprocess.run(cmd, cwd=outside, text=True, capture_output=True)
    assert run.returncode == 1, run.stdout + run.stderr
    printed = re.search(r"then `(git -C \S+ checkout <commit> -- 0002_b\.sql)`", run.stderr)
    assert printed is not None, run.stderr
    assert f"git -C {fleet.migrations} checkout" in printed.group(1)
    subprocess.run(printed.group(1).replace("<commit>", commit), shell=True, cwd=outside,
                   check=True, env={"PATH": "/usr/bin:/bin", "HOME": str(outside)})
    run = subprocess.run(cmd, cwd=outside, text=True, capture_output=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert dump(fleet.path("aaron", "eu")) == aaron
