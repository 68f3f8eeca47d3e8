"""Migrations executed through the real ``reconcile`` command (issue 11, run time): a
step never leaves statements outside its transaction, never inherits another step's
connection state, never commits a foreign-key violation, keeps its checksum through a
SIGKILL at every crash point, and never ends the reconciler — checked on the whole
``sqlite_master`` and every row of the tenant files afterwards."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RECONCILE, Fleet
from tests.test_migration_safety import dump


def fresh_catalog(fleet: Fleet, files: dict[str, str]) -> None:
    shutil.rmtree(fleet.migrations)
    for name, text in files.items():
        fleet.write_migration(name, text)


def ok(result: Any, code: int = 0) -> None:
    assert result.returncode == code, result.stdout + result.stderr


def write(path: Path, *sql: str) -> None:
    conn = sqlite3.connect(path)
    for s in sql:
        conn.execute(s)
    conn.commit()
    conn.close()


def one_tenant(fleet: Fleet, first: str, name: str, **settings: Any) -> Path:
    """A fleet of one tenant ``name`` in eu, created at v1 by ``first`` (0001)."""
    fresh_catalog(fleet, {"0001_init.sql": first})
    fleet.declare({name: {"region": "eu"}}, **settings)
    ok(fleet.run("apply"))
    return fleet.path(name, "eu")


def status(fleet: Fleet, name: str) -> tuple[str, int]:
    rows = fleet.registry(f"SELECT status, schema_version FROM tenants WHERE name = '{name}'")
    return rows[0][0], rows[0][1]


# ---------------------------------------------------------------- 1. outside the step

SEED_PY = ("import sqlite3\n\ndef migrate(conn):\n"
           "    conn.execute('ALTER TABLE tags ADD COLUMN color TEXT')\n"
           "    try:  # seed default tags; ignore ones that already exist\n"
           "        conn.execute(\"INSERT INTO tags (name) VALUES ('red')\")\n"
           "    except sqlite3.IntegrityError:\n        pass\n"
           "    conn.execute('CREATE TABLE tag_audit (name TEXT)')\n"
           "    conn.execute(\"INSERT INTO tag_audit VALUES ('seeded')\")\n")
SEED_SQL = ("ALTER TABLE tags ADD COLUMN color TEXT;\n"
            "INSERT INTO tag_log VALUES ('red');\n"
            "CREATE TABLE tag_audit (name TEXT);\n")
TAGS = ("CREATE TABLE tags (name TEXT PRIMARY KEY ON CONFLICT ROLLBACK);\n"
        "CREATE TABLE tag_log (what TEXT);\n"
        "CREATE TRIGGER no_red BEFORE INSERT ON tag_log WHEN new.what = 'red' "
        "AND EXISTS (SELECT 1 FROM tags WHERE name = 'red') "
        "BEGIN SELECT RAISE(ROLLBACK, 'red is taken'); END;\n")


@pytest.mark.parametrize("transaction", ["step", "tenant"])
@pytest.mark.parametrize("kind", ["py", "sql"])
def test_e2e_a_step_sqlite_rolled_back_leaves_the_file_exactly_as_it_was(
        fleet: Fleet, kind: str, transaction: str) -> None:
    shop1 = one_tenant(fleet, TAGS, "shop1", rollout={"transaction": transaction})
    write(shop1, "INSERT INTO tags VALUES ('red')")  # the application stores a tag
    before = dump(shop1)
    fleet.write_migration(f"0002_seed.{kind}", SEED_PY if kind == "py" else SEED_SQL)
    # old tenant (v1 → v2) and a new one created 0 → 2 in the same pass
    fleet.declare({"shop1": {"region": "eu"}, "shop2": {"region": "eu"}},
                  rollout={"transaction": transaction})
    write_red = fleet.path("shop2", "eu")
    assert not write_red.exists()
    failed = fleet.run("apply")
    ok(failed, 3)
    assert "nothing of the step was kept" in failed.stdout
    assert status(fleet, "shop1") == ("failed", 1)
    assert dump(shop1) == before  # no tag_audit, no color column, the same rows
    assert [(m[0], m[1]) for m in before[1]] == [
        ("index", "sqlite_autoindex_tags_1"), ("table", "tag_log"), ("table", "tags"),
        ("trigger", "no_red")]
    assert before[0] == 1 and before[2] == {"tag_log": [], "tags": [("red",)]}
    # shop2 had no 'red': it was created at v2 in that pass
    assert dump(write_red)[0] == 2
    # the data fixed, the retry succeeds
    write(shop1, "DELETE FROM tags")
    ok(fleet.run("apply", "--retry-failed"))
    version, master, rows = dump(shop1)
    assert version == 2 and status(fleet, "shop1") == ("active", 2)
    assert {m[1] for m in master} == {"tags", "tag_log", "no_red", "sqlite_autoindex_tags_1",
                                      "tag_audit"}
    assert rows["tags"] == ([("red", None)] if kind == "py" else [])
    assert rows["tag_audit"] == ([("seeded",)] if kind == "py" else [])


# ---------------------------------------------------------------- 2. connection state

ACCOUNTS = ("CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT);\n"
            "CREATE TABLE invoices (id INTEGER PRIMARY KEY, account_id INTEGER "
            "REFERENCES accounts(id));\n")
NOCASE = ("PRAGMA legacy_alter_table = ON;\nPRAGMA recursive_triggers = ON;\n"
          "ALTER TABLE accounts RENAME TO accounts_old;\n"
          "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT COLLATE NOCASE);\n"
          "INSERT INTO accounts SELECT id, email FROM accounts_old;\nDROP TABLE accounts_old;\n")
RENAME = "ALTER TABLE accounts RENAME TO customers;\n"


def test_e2e_connection_state_never_carries_to_the_next_step(fleet: Fleet) -> None:
    """The issue's case: 0002 sets legacy_alter_table, 0003 renames. Tenants at v3 by
    every route — one step per pass, all in one pass, created fresh, in both
    transaction modes — hold one schema."""
    fresh_catalog(fleet, {"0001_init.sql": ACCOUNTS, "0002_accounts_nocase.sql": NOCASE})
    early = {"early": {"region": "eu"}, "early-t": {"region": "eu"}}
    fleet.declare(early, schema=1)
    ok(fleet.run("apply"))
    fleet.declare(early, schema=2)
    ok(fleet.run("apply"))
    fleet.write_migration("0003_rename_accounts.sql", RENAME)
    onepass = {"onepass": {"region": "us"}}
    fleet.declare({**{n: {"region": "eu", "schema": 2} for n in early},
                   "onepass": {"region": "us", "schema": 1}})
    ok(fleet.run("apply"))
    everyone = {**early, **onepass, "late": {"region": "eu"}}
    fleet.declare({**everyone, "early-t": {"region": "eu"}}, rollout={"transaction": "step"})
    ok(fleet.run("apply"))
    # created fresh in one transaction for all steps
    fleet.declare({**everyone, "late-t": {"region": "us"}}, rollout={"transaction": "tenant"})
    ok(fleet.run("apply"))
    dumps = {n: dump(fleet.path(n, spec["region"]))
             for n, spec in {**everyone, "late-t": {"region": "us"}}.items()}
    expected: Any = (3, [("table", "customers", "customers",
                     "CREATE TABLE \"customers\" (id INTEGER PRIMARY KEY, email TEXT COLLATE "
                     "NOCASE)"),
                    ("table", "invoices", "invoices",
                     "CREATE TABLE invoices (id INTEGER PRIMARY KEY, account_id INTEGER "
                     "REFERENCES \"customers\"(id))")],
                {"customers": [], "invoices": []})
    assert dumps == {n: expected for n in dumps}


# ---------------------------------------------------------------- 3. foreign keys

PROJECTS = ("CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT, archived INTEGER "
            "DEFAULT 0);\nCREATE TABLE tasks (id INTEGER PRIMARY KEY, project_id INTEGER NOT "
            "NULL REFERENCES projects(id), title TEXT);\n")
REBUILD = ("PRAGMA defer_foreign_keys = ON;\n"
           "CREATE TABLE projects_new (id INTEGER PRIMARY KEY, name TEXT);\n"
           "INSERT INTO projects_new SELECT id, name FROM projects WHERE archived = 0;\n"
           "DROP TABLE projects;\nALTER TABLE projects_new RENAME TO projects;\n")


@pytest.mark.parametrize("transaction", ["step", "tenant"])
def test_e2e_a_step_never_commits_a_foreign_key_violation(fleet: Fleet,
                                                         transaction: str) -> None:
    acme = one_tenant(fleet, PROJECTS, "acme", rollout={"transaction": transaction})
    write(acme, "INSERT INTO projects VALUES (1, 'a', 0), (2, 'b', 1)",
          "INSERT INTO tasks (project_id, title) VALUES (1, 't1'), (2, 't2')")
    before = dump(acme)
    fleet.write_migration("0002_drop_archived.sql", REBUILD)
    failed = fleet.run("apply")
    ok(failed, 3)
    assert ("0002_drop_archived.sql: leaves foreign-key violations: tasks rowid 2 → projects"
            in failed.stdout)
    assert dump(acme) == before and status(fleet, "acme") == ("failed", 1)
    write(acme, "DELETE FROM tasks WHERE project_id = 2")
    ok(fleet.run("apply", "--retry-failed"))
    assert dump(acme)[0] == 2 and dump(acme)[2] == {"projects": [(1, "a")],
                                                    "tasks": [(1, 1, "t1")]}


def test_e2e_the_health_gate_checks_foreign_keys_and_the_hint_is_true(fleet: Fleet) -> None:
    acme = one_tenant(fleet, PROJECTS, "acme")
    # an application without foreign_keys = ON left an orphan; a step not touching the
    # two tables commits, and the health gate names the orphan
    write(acme, "INSERT INTO tasks (project_id, title) VALUES (7, 'orphan')")
    fleet.write_migration("0002_other.sql", "CREATE TABLE other (x);\n")
    failed = fleet.run("apply")
    ok(failed, 3)
    assert "health gate: foreign_key_check: tasks rowid 1 → projects" in failed.stdout
    # the loader's hint about foreign_keys no longer advises a pragma that does nothing
    fleet.write_migration("0003_fk.sql", "PRAGMA foreign_keys = OFF;\nSELECT 1;\n")
    refused = fleet.run("validate")
    ok(refused, 1)
    assert "defer_foreign_keys" not in refused.stderr
    assert "the reconciler checks them before each step's COMMIT" in refused.stderr


# ---------------------------------------------------------------- 5. checksums


TICKETS = "CREATE TABLE tickets (id INTEGER PRIMARY KEY, title TEXT);\n"
STATUS_NEW = "ALTER TABLE tickets ADD COLUMN status TEXT NOT NULL DEFAULT 'new';\n"
STATUS_OPEN = "ALTER TABLE tickets ADD COLUMN status TEXT NOT NULL DEFAULT 'open';\n"
# crash point → whether a tenant file holds 0002 when the pass dies
CRASH_POINTS = {
    "apply:after-checksums": False,
    "create.before_link": False,
    "create.after_link": True,
    "rollout:after-snapshot": True,  # t3 was created at v2 before the rollout began
    "rollout:after-migrate": True,
    "rollout:before-record": True,
}


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
def test_e2e_a_checksum_is_durable_before_the_first_use_at_every_crash_point(
        fleet: Fleet, point: str) -> None:
    fresh_catalog(fleet, {"0001_init.sql": TICKETS})
    old = {"t1": {"region": "eu"}, "t2": {"region": "eu"}}
    fleet.declare(old)
    ok(fleet.run("apply"))
    fleet.write_migration("0002_status.sql", STATUS_NEW)
    fleet.declare({**old, "t3": {"region": "us"}}, rollout={"canary": 1, "batch": 10,
                                                           "snapshot": True})
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": point})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    at_v2 = {n for n, r in (("t1", "eu"), ("t2", "eu"), ("t3", "us"))
             if fleet.path(n, r).exists() and fleet.user_version(fleet.path(n, r)) == 2}
    assert bool(at_v2) is CRASH_POINTS[point]
    fleet.write_migration("0002_status.sql", STATUS_OPEN)  # the operator edits it in place
    again = fleet.run("apply")
    files = {n: fleet.path(n, r) for n, r in (("t1", "eu"), ("t2", "eu"), ("t3", "us"))}
    if at_v2:  # applied somewhere: refused, nothing touched
        ok(again, 1)
        assert "0002_status.sql: edited after it was applied: " in again.stderr
        assert "version 2 (recorded sha256" in again.stderr
        assert all(dump(files[n])[1][0][3].endswith("DEFAULT 'new')") for n in at_v2)
        assert all(dump(p)[0] == 1 for n, p in files.items() if n not in at_v2 and p.exists())
    else:  # committed nowhere: the edit is the migration now, on every tenant
        ok(again)
        assert {n: dump(p)[1] for n, p in files.items()} == {n: [(
            "table", "tickets", "tickets", "CREATE TABLE tickets (id INTEGER PRIMARY KEY, "
            "title TEXT, status TEXT NOT NULL DEFAULT 'open')")] for n in files}
        assert fleet.registry("SELECT version, applied FROM migrations ORDER BY 1") == [
            (1, 1), (2, 1)]


# ---------------------------------------------------------------- 10. hard exits


HIDDEN_EXIT = ("import os\n\ndef migrate(conn):\n    conn.execute('DELETE FROM tickets')\n"
               "    getattr(os, '_ex' + 'it')(0)  # beyond what a static check can see\n")
SYS_EXIT = ("import sys\n\ndef migrate(conn):\n    conn.execute('DELETE FROM tickets')\n"
            "    getattr(sys, 'ex' + 'it')(0)\n")


def test_e2e_an_exit_inside_a_migration_never_reports_success(fleet: Fleet) -> None:
    t1 = one_tenant(fleet, TICKETS, "t1")
    write(t1, "INSERT INTO tickets VALUES (1, 'keep me')")
    before = dump(t1)
    # sys.exit(): a failed step, the pass goes on and says so
    fleet.write_migration("0002_exit.py", SYS_EXIT)
    validated = fleet.run("validate")
    ok(validated, 1)
    assert "0002_exit.py:5:1: fails on an empty database: called sys.exit(0)" in validated.stderr
    failed = fleet.run("apply")
    ok(failed, 3)
    assert "called sys.exit(0): a migration must never end the reconciler" in failed.stdout
    assert dump(t1) == before and status(fleet, "t1") == ("failed", 1)
    # os._exit(0): no except catches it — validate and apply still do not report success
    fleet.write_migration("0002_exit.py", HIDDEN_EXIT)
    validated = fleet.run("validate")
    ok(validated, 1)
    assert "0002_exit.py: ended the process during the dry run" in validated.stderr
    died = fleet.run("apply", "--retry-failed")
    ok(died, 1)
    assert "error: the pass ended unexpectedly: its process exited with status 0" in died.stderr
    assert "Traceback" not in died.stderr
    assert dump(t1) == before and status(fleet, "t1") == ("migrating", 1)
    # fixed, the next pass recovers the tenant as after a crash
    fleet.write_migration("0002_exit.py", "def migrate(conn):\n"
                          "    conn.execute('CREATE TABLE done (x)')\n")
    ok(fleet.run("apply", "--retry-failed"))
    assert status(fleet, "t1") == ("active", 2)
    assert dump(t1) == (2, [("table", "done", "done", "CREATE TABLE done (x)"),
                            *before[1]], {"done": [], "tickets": [(1, "keep me")]})


# ---------------------------------------------------------------- 9. one transaction


def test_e2e_transaction_tenant_ends_each_tenant_at_its_old_version_or_the_target(
        fleet: Fleet) -> None:
    fresh_catalog(fleet, {"0001_init.sql": TICKETS})
    names = {"a": {"region": "eu"}, "b": {"region": "eu"}}
    fleet.declare(names)
    ok(fleet.run("apply"))
    write(fleet.path("b", "eu"), "INSERT INTO tickets VALUES (1, 'x'), (2, 'x')")
    fleet.write_migration("0002_status.sql", STATUS_NEW)
    fleet.write_migration("0003_unique.sql", "CREATE UNIQUE INDEX title ON tickets (title);\n")
    fleet.declare(names, rollout={"transaction": "tenant", "canary": 0, "max_failures": 1})
    ok(fleet.run("apply"), 3)
    assert dump(fleet.path("a", "eu"))[0] == 3
    assert dump(fleet.path("b", "eu")) == (1, [("table", "tickets", "tickets", TICKETS[:-2])],
                                           {"tickets": [(1, "x"), (2, "x")]})
    assert status(fleet, "b") == ("failed", 1)
    # the same history one step per transaction keeps b at the last committed step
    fleet.declare(names, rollout={"transaction": "step", "canary": 0, "max_failures": 1})
    ok(fleet.run("apply", "--retry-failed"), 3)
    assert dump(fleet.path("b", "eu"))[0] == 2


def test_e2e_an_unknown_transaction_mode_is_refused_at_its_line(fleet: Fleet) -> None:
    fleet.write_config("version: 1\nsettings:\n  rollout:\n    transaction: tenants\n"
                       "regions:\n  eu: {}\ntenants:\n  a: {region: eu}\n")
    refused = fleet.run("validate")
    ok(refused, 1)
    assert ("tenants.yaml:4:18: settings.rollout.transaction must be step or tenant, got "
            "'tenants'") in refused.stderr
    assert "write step (each migration commits on its own) or tenant" in refused.stderr
    assert not fleet.data.exists()


def test_e2e_killed_during_the_health_gate_the_edit_is_refused_and_no_worker_lives_on(
        fleet: Fleet) -> None:
    """The issue's case: SIGKILL to `reconcile` while the canary's health gate runs. The
    pass's child dies with it (the fleet lock is free at once), and the checksum of the
    step the canary committed was recorded before: editing it is refused."""
    t1 = one_tenant(fleet, TICKETS, "t1")
    names = {"t1": {"region": "eu"}, "t2": {"region": "eu"}}
    fleet.declare(names)
    ok(fleet.run("apply"))
    fleet.write_migration("0002_status.sql", STATUS_NEW)
    fleet.write_migration("checks/0002_slow.sql", (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000000)\n"
        "SELECT 1 FROM n WHERE i < 0;\n"))
    fleet.declare(names, rollout={"canary": 1, "batch": 10})
    env = {**os.environ, "RECONCILE_CONFIG": str(fleet.config)}
    env.pop("RECONCILE_CRASH_AT", None)
    proc = subprocess.Popen([RECONCILE, "apply"], cwd=fleet.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while fleet.user_version(t1) != 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.3)  # inside the slow check
    finally:
        proc.kill()
        proc.wait()
    (fleet.migrations / "checks" / "0002_slow.sql").unlink()
    fleet.write_migration("0002_status.sql", STATUS_OPEN)
    refused = fleet.run("apply", "--no-wait")  # no lock held: the child died too
    ok(refused, 1)
    assert "0002_status.sql: edited after it was applied: " in refused.stderr
    assert [dump(fleet.path(n, "eu"))[0] for n in names] == [2, 1]
