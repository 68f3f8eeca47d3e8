"""How a migration step executes (issue 11, run time), on real SQLite files: no statement
outside the step's transaction, no connection state carried from one step to the next,
no foreign-key violation committed, a ``sys.exit()`` is a failed step — each through
several routes (``.sql`` and ``.py``, created fresh and migrated, ``rollout.transaction:
step`` and ``tenant``), checked on the whole ``sqlite_master`` and every row."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from reconciler import dryrun, migrations, steprun, tenantdb
from reconciler.migrations import Catalog
from tests.conftest import REPO

MODES = ("step", "tenant")
Dump = tuple[int, list[tuple[Any, ...]], dict[str, list[tuple[Any, ...]]]]


def catalog(root: Path, files: dict[str, str]) -> Catalog:
    d = root / "migrations"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text)
    return migrations.load(d)


def dump(path: Path) -> Dump:
    """user_version, the full sqlite_master, and every table's rows in rowid order."""
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        master = [tuple(r) for r in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")]
        rows = {name: [tuple(r) for r in conn.execute(f'SELECT * FROM "{name}" ORDER BY rowid')]
                for kind, name, _t, _s in master
                if kind == "table" and not name.startswith("sqlite_")}
        return int(conn.execute("PRAGMA user_version").fetchone()[0]), master, rows
    finally:
        conn.close()


def created(root: Path, cat: Catalog, target: int, mode: str, name: str = "fresh") -> Path:
    path = root / "data" / f"{name}-{mode}-{target}.db"
    result = tenantdb.create(path, cat, target, 1.0, transaction=mode)
    assert result.error is None, result.error
    return path


def run(conn_sql: list[str], path: Path) -> None:
    conn = sqlite3.connect(path)
    for sql in conn_sql:
        conn.execute(sql)
    conn.commit()
    conn.close()


# ------------------------------------------------------------ 1. statements outside


BASE = ("CREATE TABLE tags (name TEXT PRIMARY KEY ON CONFLICT ROLLBACK);\n"
        "CREATE TABLE log (what TEXT);\n"
        "CREATE TRIGGER no_red BEFORE INSERT ON log WHEN new.what = 'red' "
        "BEGIN SELECT RAISE(ROLLBACK, 'red is reserved'); END;\n")
AFTER = ("    conn.execute('CREATE TABLE tag_audit (name TEXT)')\n"
         "    conn.execute(\"INSERT INTO tag_audit VALUES ('seeded')\")\n")
ROLLED_BACK_BY_SQLITE = {
    # the case: a PRIMARY KEY ON CONFLICT ROLLBACK caught by the migration
    "py-on-conflict-rollback": (
        "import sqlite3\n\ndef migrate(conn):\n"
        "    conn.execute('ALTER TABLE tags ADD COLUMN color TEXT')\n"
        "    try:\n        conn.execute(\"INSERT INTO tags (name) VALUES ('red')\")\n"
        "    except sqlite3.IntegrityError:\n        pass\n" + AFTER, "0002_seed.py"),
    # RAISE(ROLLBACK) in a trigger, caught
    "py-raise-rollback": (
        "import sqlite3\n\ndef migrate(conn):\n"
        "    conn.execute('ALTER TABLE tags ADD COLUMN color TEXT')\n"
        "    try:\n        conn.execute(\"INSERT INTO log VALUES ('red')\")\n"
        "    except sqlite3.Error:\n        pass\n" + AFTER, "0002_seed.py"),
    # an interrupt (here from a progress handler) rolls the transaction back too
    "py-interrupt": (
        "import sqlite3\n\ndef migrate(conn):\n"
        "    conn.execute('ALTER TABLE tags ADD COLUMN color TEXT')\n"
        "    red = conn.execute(\"SELECT count(*) FROM tags WHERE name = 'red'\").fetchone()[0]\n"
        "    conn.set_progress_handler(lambda: red, 1)\n"
        "    try:\n        conn.execute(\"INSERT INTO log VALUES ('x')\")\n"
        "    except sqlite3.Error:\n        pass\n"
        "    conn.set_progress_handler(None, 0)\n" + AFTER, "0002_seed.py"),
    # statements prepared once (executemany) keep running after the rollback
    "py-executemany": (
        "import sqlite3\n\ndef rows(conn):\n    yield ('a',)\n"
        "    try:\n        conn.execute(\"INSERT INTO tags (name) VALUES ('red')\")\n"
        "    except sqlite3.IntegrityError:\n        pass\n    yield ('b',)\n\n"
        "def migrate(conn):\n    conn.execute('CREATE TABLE tag_audit (name TEXT)')\n"
        "    try:\n        conn.executemany('INSERT INTO tag_audit VALUES (?)', rows(conn))\n"
        "    except sqlite3.Error:\n        pass\n", "0002_seed.py"),
    # a .sql step: the failing statement ends it, SQLite's rollback included
    "sql-raise-rollback": (
        "ALTER TABLE tags ADD COLUMN color TEXT;\nINSERT INTO log VALUES ('red');\n"
        "CREATE TABLE tag_audit (name TEXT);\n", "0002_seed.sql"),
    "sql-on-conflict-rollback": (
        "ALTER TABLE tags ADD COLUMN color TEXT;\nINSERT INTO tags (name) VALUES ('red');\n"
        "CREATE TABLE tag_audit (name TEXT);\n", "0002_seed.sql"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("route", sorted(ROLLED_BACK_BY_SQLITE))
def test_no_statement_of_a_step_runs_after_sqlite_rolled_its_transaction_back(
        tmp_path: Path, route: str, mode: str) -> None:
    text, name = ROLLED_BACK_BY_SQLITE[route]
    cat = catalog(tmp_path, {"0001_tags.sql": BASE + "INSERT INTO tags VALUES ('red');\n",
                             name: text})
    # an old tenant at v1 holding the conflicting row
    old = created(tmp_path, cat, 1, mode, "old")
    before = dump(old)
    assert before[2] == {"tags": [("red",)], "log": []}
    result = tenantdb.migrate_file(old, cat, 2, 1.0, transaction=mode)
    assert result.error is not None and result.to_version == 1 and result.applied == ()
    assert name in result.error and "nothing of the step was kept" in result.error
    assert dump(old) == before  # exactly the previous schema and rows: no tag_audit
    # created fresh 0 → 2: nothing appears
    fresh = tmp_path / "data" / "fresh.db"
    assert tenantdb.create(fresh, cat, 2, 1.0, transaction=mode).error is not None
    assert not fresh.exists() and list(fresh.parent.glob(".fresh*")) == []
    # the data fixed (the conflict and the trigger gone), the retry succeeds
    run(["DELETE FROM tags", "DROP TRIGGER no_red"], old)
    again = tenantdb.migrate_file(old, cat, 2, 1.0, transaction=mode)
    assert again.error is None and again.applied == (2,)
    version, master, rows = dump(old)
    assert version == 2 and "tag_audit" in {m[1] for m in master}
    assert rows["tag_audit"] == ([("a",), ("b",)] if route == "py-executemany" else
                                 [] if route.startswith("sql") else [("seeded",)])


@pytest.mark.parametrize("mode", MODES)
def test_a_python_step_may_not_end_or_replace_the_transaction_at_run_time(
        tmp_path: Path, mode: str) -> None:
    """What the loader cannot see (names built at run time) is refused when it runs."""
    for body in ("getattr(conn, 'comm' + 'it')()", "conn.execute('COMM' + 'IT')",
                 "conn.execute('PRAGMA user_' + 'version = 7')",
                 "getattr(conn, 'set_author' + 'izer')(None)",
                 "setattr(conn, 'isolation_' + 'level', 'DEFERRED')"):
        cat = catalog(tmp_path, {"0001_a.sql": "CREATE TABLE t (a);\n",
                                 "0002_b.py": "import sqlite3\ndef migrate(conn):\n"
                                 "    conn.execute('INSERT INTO t VALUES (1)')\n"
                                 f"    try:\n        {body}\n    except sqlite3.Error:\n"
                                 "        pass\n    conn.execute('CREATE TABLE u (b)')\n"})
        path = created(tmp_path, cat, 1, mode, f"t{abs(hash(body))}")
        before = dump(path)
        result = tenantdb.migrate_file(path, cat, 2, 1.0, transaction=mode)
        assert result.error is not None and "0002_b.py" in result.error, body
        assert dump(path) == before, body


# ------------------------------------------------------------ 2. connection state


LEAKY = {
    "0001_init.sql": (
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT);\n"
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY, account_id INTEGER "
        "REFERENCES accounts(id));\n"
        "CREATE TABLE names (n TEXT CHECK (length(n) < 5));\n"
        "INSERT INTO names VALUES ('ab'), ('Ab'), ('cd');\n"
        "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);\n"),
    # per-connection state of every kind, set by one step …
    "0002_state.py": (
        "def migrate(conn):\n"
        "    for p in ('legacy_alter_table', 'case_sensitive_like', 'recursive_triggers',\n"
        "              'reverse_unordered_selects', 'ignore_check_constraints'):\n"
        "        conn.execute(f'PRAGMA {p} = ON')\n"
        "    conn.execute('CREATE TEMP TABLE items (id INTEGER PRIMARY KEY, v TEXT)')\n"
        "    conn.execute(\"CREATE TEMP TRIGGER spy AFTER INSERT ON main.names BEGIN \"\n"
        "                 \"INSERT INTO accounts (email) VALUES (new.n); END\")\n"
        "    conn.execute('CREATE TEMP VIEW accounts_v AS SELECT 1')\n"
        "    conn.create_collation('backwards', lambda a, b: (a < b) - (a > b))\n"
        "    conn.row_factory = sqlite3.Row\n"
        "    conn.text_factory = bytes\n"
        "    conn.execute('CREATE TABLE marker (x)')\n"
        "    conn.execute('PRAGMA max_page_count = 1')\n"),
    # … must not change what the next one does
    "0003_uses.sql": (
        "ALTER TABLE accounts RENAME TO customers;\n"
        "CREATE TABLE likes AS SELECT n FROM names WHERE n LIKE 'a%';\n"
        "CREATE TABLE copy AS SELECT n FROM names;\n"
        "INSERT OR IGNORE INTO names VALUES ('toolong');\n"
        "INSERT INTO names VALUES ('ef');\n"
        "INSERT INTO items (v) VALUES ('main');\n"
        "ALTER TABLE items ADD COLUMN extra TEXT;\n"
        "CREATE TABLE big AS WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
        "WHERE i < 2000) SELECT i, randomblob(100) IS NOT NULL AS b FROM r;\n"),
    "0004_py.py": (
        "def migrate(conn):\n"
        "    row = conn.execute('SELECT count(*) FROM names').fetchone()\n"
        "    assert type(row) is tuple, type(row)\n"
        "    conn.execute('CREATE TABLE seen (n TEXT)')\n"
        "    conn.execute('INSERT INTO seen SELECT n FROM names ORDER BY n')\n"
        "    assert isinstance(conn.execute('SELECT n FROM seen').fetchone()[0], str)\n"),
}
LEAKY["0002_state.py"] = "import sqlite3\n\n" + LEAKY["0002_state.py"]


def routes(root: Path, cat: Catalog, version: int) -> dict[str, Dump]:
    """The file at ``version`` by every route: created fresh, one step per pass, all
    steps in one pass from v1 — each in both transaction modes."""
    out: dict[str, Dump] = {}
    for mode in MODES:
        out[f"fresh/{mode}"] = dump(created(root, cat, version, mode))
        stepwise = created(root, cat, 1, mode, f"stepwise{version}")
        for v in range(2, version + 1):
            assert tenantdb.migrate_file(stepwise, cat, v, 1.0, transaction=mode).error is None
        out[f"one step per pass/{mode}"] = dump(stepwise)
        at_once = created(root, cat, 1, mode, f"atonce{version}")
        result = tenantdb.migrate_file(at_once, cat, version, 1.0, transaction=mode)
        assert result.error is None, result.error
        out[f"all in one pass/{mode}"] = dump(at_once)
    return out


def test_connection_state_set_by_one_step_never_changes_the_next(tmp_path: Path) -> None:
    cat = catalog(tmp_path, LEAKY)
    for version in range(1, cat.latest + 1):
        found = routes(tmp_path / f"v{version}", cat, version)
        first = next(iter(found.values()))
        assert all(d == first for d in found.values()), {k: v for k, v in found.items()
                                                          if v != first}
    version, master, rows = first
    assert version == 4
    sql = {name: text for _t, name, _tbl, text in master}
    # a default (non-legacy) rename rewrites the reference; no temp object survived
    assert sql["invoices"] == ("CREATE TABLE invoices (id INTEGER PRIMARY KEY, account_id "
                               'INTEGER REFERENCES "customers"(id))')
    assert sql["items"] == "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT, extra TEXT)"
    assert sorted(sql) == ["big", "copy", "customers", "invoices", "items", "likes", "marker",
                           "names", "seen"]
    assert rows["likes"] == [("ab",), ("Ab",)]  # LIKE is case-insensitive by default
    assert rows["copy"] == [("ab",), ("Ab",), ("cd",)]  # scan order, not reversed
    assert rows["names"] == [("ab",), ("Ab",), ("cd",), ("ef",)]  # CHECK enforced
    assert rows["customers"] == []  # the temp trigger died with its step
    assert rows["items"] == [(1, "main", None)]  # into main.items, not a temp shadow
    assert len(rows["big"]) == 2000  # max_page_count = 1 did not reach 0003
    assert rows["seen"] == [("Ab",), ("ab",), ("cd",), ("ef",)]


def test_a_function_registered_by_one_step_is_gone_in_the_next(tmp_path: Path) -> None:
    cat = catalog(tmp_path, {
        "0001_a.py": "def migrate(conn):\n    conn.create_function('shout', 1, str.upper)\n"
                     "    conn.execute(\"CREATE TABLE t AS SELECT shout('a') AS x\")\n",
        "0002_b.sql": "CREATE TABLE u AS SELECT shout('b') AS y;\n"})
    for mode in MODES:
        path = created(tmp_path, cat, 1, mode)
        result = tenantdb.migrate_file(path, cat, 2, 1.0, transaction=mode)
        assert result.error is not None and "no such function: shout" in result.error
        fresh = tmp_path / f"f-{mode}.db"
        created_result = tenantdb.create(fresh, cat, 2, 1.0, transaction=mode)
        assert "no such function: shout" in (created_result.error or "")
        assert dump(path) == (1, [("table", "t", "t", "CREATE TABLE t(x)")], {"t": [("A",)]})
    problems = dryrun.in_memory(cat)
    assert [(Path(p.file).name, "no such function: shout" in p.message) for p in problems] \
        == [("0002_b.sql", True)]


def test_shipped_migrations_give_one_schema_per_version_by_every_route(tmp_path: Path) -> None:
    cat = migrations.load(REPO / "migrations")
    for version in range(1, cat.latest + 1):
        found = routes(tmp_path / f"v{version}", cat, version)
        first = next(iter(found.values()))
        assert all(d == first for d in found.values())
        assert first[0] == version


# ------------------------------------------------------------ 3. foreign keys


PARENT_CHILD = (
    "CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT, archived INTEGER DEFAULT 0);\n"
    "CREATE TABLE tasks (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL "
    "REFERENCES projects(id), title TEXT);\n"
    "INSERT INTO projects VALUES (1, 'a', 0), (2, 'b', 1);\n"
    "INSERT INTO tasks (project_id, title) VALUES (1, 't1'), (2, 't2');\n")
BREAKS_FOREIGN_KEYS = {
    # the case: a rebuild that copies only some parent rows
    "sql-rebuild": ("PRAGMA defer_foreign_keys = ON;\n"
                    "CREATE TABLE projects_new (id INTEGER PRIMARY KEY, name TEXT);\n"
                    "INSERT INTO projects_new SELECT id, name FROM projects WHERE archived = 0;\n"
                    "DROP TABLE projects;\nALTER TABLE projects_new RENAME TO projects;\n",
                    "0002_drop_archived.sql"),
    "sql-delete-parent": ("DELETE FROM projects WHERE archived = 1;\n", "0002_prune.sql"),
    "py-update-child": ("def migrate(conn):\n"
                        "    conn.execute('UPDATE tasks SET project_id = 9 "
                        "WHERE project_id = 2')\n",
                        "0002_move.py"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("route", sorted(BREAKS_FOREIGN_KEYS))
def test_a_step_never_commits_a_foreign_key_violation(tmp_path: Path, route: str,
                                                      mode: str) -> None:
    text, name = BREAKS_FOREIGN_KEYS[route]
    cat = catalog(tmp_path, {"0001_init.sql": PARENT_CHILD, name: text,
                             "0003_later.sql": "CREATE TABLE later (x);\n"})
    old = created(tmp_path, cat, 1, mode, "old")
    before = dump(old)
    result = tenantdb.migrate_file(old, cat, 3, 1.0, transaction=mode)
    assert result.error is not None and result.to_version == 1
    assert f"{name}: leaves foreign-key violations: tasks rowid 2 → projects" in result.error
    assert dump(old) == before
    fresh = tmp_path / "data" / "fresh.db"
    assert "leaves foreign-key violations" in (
        tenantdb.create(fresh, cat, 3, 1.0, transaction=mode).error or "")
    assert not fresh.exists()
    # the orphan's parent exists again: the same step commits
    run(["UPDATE tasks SET project_id = 1"], old)
    assert tenantdb.migrate_file(old, cat, 3, 1.0, transaction=mode).error is None
    assert dump(old)[0] == 3 and dump(old)[2]["tasks"] == [(1, 1, "t1"), (2, 1, "t2")]


def test_foreign_key_check_names_every_violation_and_is_quiet_when_clean(tmp_path: Path
                                                                        ) -> None:
    path = tmp_path / "f.db"
    run(["CREATE TABLE p (id INTEGER PRIMARY KEY)", "CREATE TABLE c (p INTEGER REFERENCES p)",
         *[f"INSERT INTO c VALUES ({i})" for i in range(1, 8)], "INSERT INTO p VALUES (1)"],
        path)
    conn = sqlite3.connect(path)
    assert steprun.foreign_key_violations(conn) == (
        "c rowid 2 → p; c rowid 3 → p; c rowid 4 → p; c rowid 5 → p; c rowid 6 → p "
        "(6 rows in all)")
    assert steprun.foreign_key_violations(conn, {"unrelated"}) == ""
    assert steprun.foreign_key_violations(conn, {"p"}).startswith("c rowid 2 → p")
    conn.execute("DELETE FROM c WHERE p > 1")
    assert steprun.foreign_key_violations(conn) == ""
    conn.close()


# ------------------------------------------------------------ 10. sys.exit


@pytest.mark.parametrize("mode", MODES)
# the visible forms (sys.exit(), raise SystemExit) are refused at load (test_catalog_rules);
# what the loader cannot see must fail the step at run time
@pytest.mark.parametrize("call", ["exit_now()", "exit_now(0)", "exit_now(3)"])
def test_system_exit_from_a_migration_is_a_failed_step(tmp_path: Path, call: str,
                                                        mode: str) -> None:
    cat = catalog(tmp_path, {
        "0001_a.sql": "CREATE TABLE t (a);\nINSERT INTO t VALUES (1);\n",
        "0002_b.py": "import sys\nexit_now = getattr(sys, 'ex' + 'it')\n\n"
                     "def migrate(conn):\n    conn.execute('DELETE FROM t')\n"
                     f"    {call}\n"})
    path = created(tmp_path, cat, 1, mode)
    before = dump(path)
    result = tenantdb.migrate_file(path, cat, 2, 1.0, transaction=mode)
    assert result.error is not None and result.error.startswith("0002_b.py:6: called sys.exit(")
    assert "must never end the reconciler" in result.error
    assert dump(path) == before == (1, [("table", "t", "t", "CREATE TABLE t (a)")],
                                    {"t": [(1,)]})
    problems = dryrun.in_memory(cat)
    assert len(problems) == 1 and "called sys.exit(" in problems[0].message


def test_an_exit_no_except_can_catch_fails_the_isolated_dry_run(tmp_path: Path) -> None:
    cat = catalog(tmp_path, {
        "0001_a.sql": "CREATE TABLE t (a);\n",
        "0002_b.py": "import os\n\ndef migrate(conn):\n    getattr(os, '_ex' + 'it')(0)\n",
        "0003_c.sql": "CREATE TABLE u (a);\n"})
    problems = dryrun.isolated(cat)
    assert [(Path(p.file).name, p.message) for p in problems] == [
        ("0002_b.py", "ended the process during the dry run (it exited with status 0) — a "
                      "migration must never end the reconciler")]
    good = catalog(tmp_path, {"0001_a.sql": "CREATE TABLE t (a);\n"})
    assert dryrun.isolated(good) == []
