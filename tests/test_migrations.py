"""The migration catalog (DESIGN §3): naming, numbering, what a migration may contain,
how SQL is split, how a step runs inside the caller's transaction, and the checksum rule.

Every catalog is a real directory in tmp_path; every run uses a real SQLite file."""

from __future__ import annotations

import hashlib
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from reconciler import engine, migrations
from reconciler.errors import InvalidInput, Problem
from reconciler.migrations import Catalog, MigrationError
from reconciler.registry import Registry
from reconciler.sqltext import Statement, split_statements
from tests.conftest import REPO, run_all

OK = "CREATE TABLE t (a);\n"


def make(tmp_path: Path, files: dict[str, str | bytes | None]) -> Path:
    """A migrations directory; a value of None makes a directory of that name."""
    d = tmp_path / "migrations"
    d.mkdir(exist_ok=True)
    for name, text in files.items():
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is None:
            path.mkdir()
        elif isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
    return d


def problems_of(tmp_path: Path, files: dict[str, str | bytes | None]) -> list[Problem]:
    with pytest.raises(InvalidInput) as info:
        migrations.load(make(tmp_path, files))
    return list(info.value.problems)


# --------------------------------------------------------------------------- valid catalogs


def test_shipped_catalog_loads_with_checksums_of_the_exact_bytes() -> None:
    catalog = migrations.load(REPO / "migrations")
    assert catalog.latest == 3
    assert [m.version for m in catalog.migrations] == [1, 2, 3]
    assert [m.kind for m in catalog.migrations] == ["sql", "sql", "py"]
    for m in catalog.migrations:
        assert m.sha256 == hashlib.sha256(m.path.read_bytes()).hexdigest()
    assert [c.version for c in catalog.checks] == [3]
    assert migrations.dry_run(catalog) == []


def test_empty_directory_is_a_catalog_at_version_zero(tmp_path: Path) -> None:
    assert migrations.load(make(tmp_path, {})).latest == 0


def test_files_that_are_not_migrations_are_ignored(tmp_path: Path) -> None:
    catalog = migrations.load(make(tmp_path, {
        "0001_a.sql": OK, "README.md": "how to write one", ".0002_draft.sql.swp": "x",
        "__pycache__": None, "notes.txt": "x"}))
    assert catalog.latest == 1


def test_allowed_statements_inside_the_transaction(tmp_path: Path) -> None:
    catalog = migrations.load(make(tmp_path, {"0001_a.sql": (
        "CREATE TABLE t (a);\nSAVEPOINT s;\nINSERT INTO t VALUES (1);\nROLLBACK TO s;\n"
        "ROLLBACK TRANSACTION TO SAVEPOINT s;\nRELEASE s;\nPRAGMA defer_foreign_keys = ON;\n"
        "PRAGMA user_version;\nSELECT 'BEGIN; COMMIT;';\n")}))
    assert len(catalog.migrations[0].statements) == 9
    assert migrations.dry_run(catalog) == []


def test_byte_order_mark_is_tolerated_and_not_counted_in_the_checksum(tmp_path: Path) -> None:
    data = "\ufeffCREATE TABLE t (a);\n".encode()
    catalog = migrations.load(make(tmp_path, {"0001_a.sql": data}))
    assert catalog.migrations[0].statements == (Statement(1, "CREATE TABLE t (a);"),)
    assert catalog.migrations[0].sha256 == hashlib.sha256(data[3:]).hexdigest()
    assert hashlib.sha256(data).hexdigest() in catalog.migrations[0].accepts  # older records


def test_python_migration_runs_with_the_connection(tmp_path: Path) -> None:
    catalog = migrations.load(make(tmp_path, {
        "0001_a.sql": OK,
        "0002_b.py": "def migrate(conn):\n    conn.execute('INSERT INTO t VALUES (42)')\n"}))
    conn = run_all(catalog, tmp_path / "t.db")
    assert conn.execute("SELECT a FROM t").fetchall() == [(42,)]
    assert conn.execute("PRAGMA user_version").fetchone() == (2,)


# --------------------------------------------------------------------------- invalid catalogs

# (id, files, [(file, line, column)], message fragment, hint fragment)
CASES: list[tuple[str, dict[str, str | bytes | None], list[tuple[str, int | None, int | None]],
                  str, str]] = [
    ("gap", {"0001_a.sql": OK, "0003_c.sql": OK}, [("0003_c.sql", None, None)],
     "gap: 0002 is missing", "rename this one to 0002_c.sql"),
    ("gap-range", {"0001_a.sql": OK, "0004_d.py": "def migrate(c): pass\n"},
     [("0004_d.py", None, None)], "0002–0003 are missing", "0002_d.py"),
    ("no-0001", {"0002_b.sql": OK}, [("0002_b.sql", None, None)], "0001 is missing",
     "0001_b.sql"),
    ("duplicate", {"0001_a.sql": OK, "0001_b.py": "def migrate(c): pass\n"},
     [("0001_a.sql", None, None), ("0001_b.py", None, None)],
     "duplicate migration number 0001 (also 0001_a.sql)", "renumber the other to 0002"),
    ("zero", {"0000_a.sql": OK, "0001_b.sql": OK}, [("0000_a.sql", None, None)],
     "migration 0000 is not allowed", "from 0001"),
    ("short-number", {"1_init.sql": OK}, [("1_init.sql", None, None)],
     "not NNNN_slug.sql", "rename it to 0001_init.sql"),
    ("flyway-name", {"V2__Add_Users.sql": OK}, [("V2__Add_Users.sql", None, None)],
     "not NNNN_slug.sql", "rename it to 0002_add_users.sql"),
    ("hyphen", {"0001-init.sql": OK}, [("0001-init.sql", None, None)], "not NNNN_slug.sql",
     "rename it to 0001_init.sql"),
    ("uppercase-extension", {"0001_init.SQL": OK}, [("0001_init.SQL", None, None)],
     "not NNNN_slug.sql", "rename it to 0001_init.sql"),
    ("no-number", {"init.sql": OK}, [("init.sql", None, None)], "not NNNN_slug.sql",
     "0004_add_invoices.sql"),
    ("directory", {"0001_a.sql": None}, [("0001_a.sql", None, None)], "is a directory",
     "move it out"),
    ("empty", {"0001_a.sql": ""}, [("0001_a.sql", 1, 1)], "migration is empty",
     "at least one SQL statement"),
    ("blank", {"0001_a.sql": "\n  \n\t\n"}, [("0001_a.sql", 1, 1)],
     "migration is empty", "at least one"),
    ("commit-after-comment", {"0001_a.sql": "CREATE TABLE t (a);\n-- done\nCOMMIT;\n"},
     [("0001_a.sql", 3, 1)], "`COMMIT;` manages the transaction itself", "BEGIN IMMEDIATE"),
    ("begin", {"0001_a.sql": "BEGIN TRANSACTION;\nCREATE TABLE t (a);\n"},
     [("0001_a.sql", 1, 1)], "manages the transaction", "remove it"),
    ("end", {"0001_a.sql": "CREATE TABLE t (a);\n  END;\n"}, [("0001_a.sql", 2, 3)],
     "manages the transaction", "remove it"),
    ("rollback", {"0001_a.sql": "CREATE TABLE t (a);\n/* undo */ ROLLBACK;\n"},
     [("0001_a.sql", 2, 12)], "manages the transaction", "remove it"),
    ("user-version", {"0001_a.sql": "CREATE TABLE t (a);\nPRAGMA main.user_version = 1;\n"},
     [("0001_a.sql", 2, 1)], "sets user_version", "same transaction"),
    ("attach", {"0001_a.sql": "ATTACH DATABASE '/etc/x.db' AS x;\n"}, [("0001_a.sql", 1, 1)],
     "would reach a file outside the tenant's database", "its own tenant's database"),
    ("vacuum", {"0001_a.sql": "CREATE TABLE t (a);\nVACUUM;\n"}, [("0001_a.sql", 2, 1)],
     "cannot run inside a transaction", "out of band"),
    ("foreign-keys-off", {"0001_a.sql": "PRAGMA foreign_keys = OFF;\nCREATE TABLE t (a);\n"},
     [("0001_a.sql", 1, 1)], "has no effect inside a transaction",
     "checks them before each step's COMMIT"),
    ("journal-mode", {"0001_a.sql": "PRAGMA journal_mode=DELETE;\n"}, [("0001_a.sql", 1, 1)],
     "cannot change inside a transaction", "remove it"),
    ("writable-schema", {"0001_a.sql": "PRAGMA writable_schema = 1;\n"}, [("0001_a.sql", 1, 1)],
     "can corrupt the database", "ALTER TABLE"),
    ("syntax-error", {"0001_a.sql": "CREATE TABLE t (a);\n\nCREATE TABLE u (a b c,);\n"},
     [("0001_a.sql", 3, 23)], 'SQL syntax error: near ")": syntax error', "fix the statement"),
    ("misspelled-keyword", {"0001_a.sql": "-- add users\nCREAT TABLE users (id);\n"},
     [("0001_a.sql", 2, 1)], 'near "CREAT"', "fix the statement"),
    ("unrecognized-token", {"0001_a.sql": "CREATE TABLE t (a);\nSELECT $ FROM t;\n"},
     [("0001_a.sql", 2, 8)], "unrecognized token", "fix the statement"),
    ("incomplete-last", {"0001_a.sql": "CREATE TABLE t (a);\nCREATE TABLE u (a"},
     [("0001_a.sql", 2, 18)], "incomplete input", "fix the statement"),
    ("unclosed-string", {"0001_a.sql": "CREATE TABLE t (a);\nINSERT INTO t VALUES ('x);\n"},
     [("0001_a.sql", 2, 1)], "ends inside a string", "close every string"),
    ("trigger-without-end", {"0001_a.sql": "CREATE TABLE t (a);\nCREATE TRIGGER g AFTER "
                             "INSERT ON t BEGIN\n  DELETE FROM t;\n"},
     [("0001_a.sql", 2, 1)], "CREATE TRIGGER without END", "END;"),
    ("not-utf8", {"0001_a.sql": b"CREATE TABLE t (a);\n-- caf\xe9\n"}, [("0001_a.sql", 2, 7)],
     "not UTF-8 text (byte 0xe9)", "UTF-8"),
    ("nul-byte", {"0001_a.sql": "CREATE TABLE t (a);\nSELECT\x00 1;\n"}, [("0001_a.sql", 2, 7)],
     "contains a NUL character", "corrupted"),
    ("check-nul-byte", {"0001_a.sql": OK, "checks/0001_x.sql": "SELECT 1 WHERE 0;\x00"},
     [("0001_x.sql", 1, 18)], "contains a NUL character", "corrupted"),
    ("py-syntax", {"0001_a.py": "def migrate(conn):\n    conn.execute('x'\n"},
     [("0001_a.py", 2, 17)], "Python syntax error", "fix the migration's Python code"),
    ("py-no-migrate", {"0001_a.py": "def upgrade(conn):\n    pass\n"},
     [("0001_a.py", None, None)], "has no migrate(conn) function", "def migrate(conn):"),
    ("py-migrate-not-callable", {"0001_a.py": "migrate = 'CREATE TABLE t (a)'\n"},
     [("0001_a.py", None, None)], "has no migrate(conn) function", "def migrate(conn):"),
    ("py-wrong-signature", {"0001_a.py": "\n\ndef migrate(conn, extra):\n    pass\n"},
     [("0001_a.py", 3, 1)], "exactly one argument", "def migrate(conn):"),
    ("py-import-error", {"0001_a.py": "import os\nimport no_such_module_here\n"},
     [("0001_a.py", 2, None)], "ModuleNotFoundError", "top-level code"),
    ("py-hidden-sys-exit", {"0001_a.py": "import sys\ngetattr(sys, 'exit')(2)\n"
                                         "def migrate(c): pass\n"},
     [("0001_a.py", 2, None)], "SystemExit", "top-level code"),
    ("py-commits", {"0001_a.py": "def migrate(conn):\n    conn.execute('CREATE TABLE t (a)')\n"
                                 "    conn.commit()\n"}, [("0001_a.py", 3, 5)],
     "`conn.commit()` commits the reconciler's transaction", "BEGIN IMMEDIATE"),
    ("py-executescript", {"0001_a.py": "def migrate(conn):\n    conn.executescript('x')\n"},
     [("0001_a.py", 2, 5)], "`conn.executescript()` COMMITs", "conn.execute"),
    ("py-executes-commit", {"0001_a.py": "def migrate(c):\n    c.execute('CREATE TABLE t (a)')"
                                         "\n\n    c.execute('COMMIT')\n"},
     [("0001_a.py", 4, 5)], "`COMMIT` manages the transaction itself", "remove it"),
    ("py-async", {"0001_a.py": "async def migrate(conn):\n    pass\n"}, [("0001_a.py", 1, 1)],
     "not async", "def migrate(conn):"),
    ("py-empty", {"0001_a.py": ""}, [("0001_a.py", None, None)], "has no migrate(conn)",
     "def migrate(conn):"),
    ("check-beyond-latest", {"0001_a.sql": OK, "checks/0002_x.sql": "SELECT 1 WHERE 0;\n"},
     [("0002_x.sql", None, None)], "check for version 0002, but the migrations go up to 0001",
     "number it after the migration"),
    ("check-writes", {"0001_a.sql": OK, "checks/0001_x.sql": "SELECT 1 WHERE 0;\n"
                      "DELETE FROM t;\n"}, [("0001_x.sql", 2, 1)],
     "`DELETE FROM t;` does not only read", "SELECT"),
    ("check-cte-writes", {"0001_a.sql": OK, "checks/0001_x.sql": "WITH x AS (SELECT 1) "
                          "UPDATE t SET a = 1;\n"}, [("0001_x.sql", 1, 1)], "does not only read",
     "SELECT"),
    ("check-python", {"0001_a.sql": OK, "checks/0001_x.py": "x = 1\n"},
     [("0001_x.py", None, None)], "check is not a file named NNNN_slug.sql", "SQL queries"),
    ("check-empty", {"0001_a.sql": OK, "checks/0001_x.sql": "-- nothing\n"},
     [("0001_x.sql", 1, 1)], "check is empty", "returns no rows"),
    ("check-syntax", {"0001_a.sql": OK, "checks/0001_x.sql": "SELEC 1;\n"},
     [("0001_x.sql", 1, 1)], "SQL syntax error", "fix the statement"),
    ("check-bad-name", {"0001_a.sql": OK, "checks/users.sql": "SELECT 1 WHERE 0;\n"},
     [("users.sql", None, None)], "check is not a file named NNNN_slug.sql", "0003_display"),
]


@pytest.mark.parametrize("files, where, message, hint",
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_invalid_catalog_is_reported_at_the_offending_file_and_line(
        tmp_path: Path, files: dict[str, str | bytes | None],
        where: list[tuple[str, int | None, int | None]], message: str, hint: str) -> None:
    found = problems_of(tmp_path, files)
    assert sorted((Path(p.file).name, p.line, p.column) for p in found) == sorted(where), \
        "\n".join(map(str, found))
    assert any(message in p.message and hint in p.hint for p in found), \
        "\n".join(map(str, found))
    assert all(p.hint for p in found)


def test_case_ids_are_distinct() -> None:
    assert len({c[0] for c in CASES}) == len(CASES)


def test_every_problem_in_the_catalog_is_reported_at_once(tmp_path: Path) -> None:
    found = problems_of(tmp_path, {
        "0001_a.sql": "COMMIT;\n", "0002_b.py": "x = 1\n", "0002_c.sql": OK,
        "0004_d.sql": "", "checks/0009_z.sql": "SELECT 1;\n"})
    assert sorted((Path(p.file).name, p.message.split(":")[0]) for p in found) == [
        ("0001_a.sql", "statement `COMMIT;` manages the transaction itself"),
        ("0002_b.py", "duplicate migration number 0002 (also 0002_c.sql)"),
        ("0002_c.sql", "duplicate migration number 0002 (also 0002_b.py)"),
        ("0004_d.sql", "migration is empty"),
        ("0004_d.sql", "migration numbers have a gap"),
        ("0009_z.sql", "check for version 0009, but the migrations go up to 0004"),
    ]


def test_missing_directory_and_file_instead_of_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        migrations.load(tmp_path / "nope")
    assert info.value.problems[0].message == "migrations directory not found"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput) as info:
        migrations.load(tmp_path / "file")
    assert "is a file, not a directory" in info.value.problems[0].message


def test_unreadable_migration_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    d = make(tmp_path, {"0001_a.sql": OK})
    (d / "0002_b.sql").symlink_to(tmp_path / "gone.sql")  # dangling: cannot be read
    with pytest.raises(InvalidInput) as info:
        migrations.load(d)
    assert [(Path(p.file).name, p.message) for p in info.value.problems] == [
        ("0002_b.sql", "cannot read: No such file or directory")]


def test_python_migration_is_not_imported_into_sys_modules(tmp_path: Path) -> None:
    migrations.load(make(tmp_path, {"0001_a.py": "def migrate(conn): pass\n"}))
    assert not any(name.startswith("reconciler_migration_") for name in sys.modules)


# --------------------------------------------------------------------------- splitting


def test_split_keeps_triggers_strings_and_comments_whole_with_their_lines() -> None:
    text = (
        "-- header comment; with a semicolon\n"        # 1
        "CREATE TABLE t (a TEXT DEFAULT ';');\n"      # 2
        "/* block; comment */\n"                      # 3
        "CREATE TRIGGER g AFTER INSERT ON t BEGIN\n"  # 4
        "  UPDATE t SET a = 'x;y'; -- inner ;\n"      # 5
        "  SELECT CASE WHEN 1 THEN 2 END;\n"          # 6
        "END;\n"                                      # 7
        "\n"                                          # 8
        "  INSERT INTO t VALUES ('it''s; fine')\n"    # 9
        ";\n"                                         # 10
        "INSERT INTO t VALUES (1)  -- no semicolon at the end\n")  # 11
    got = split_statements(text)
    assert [s.line for s in got] == [2, 4, 9, 11]
    assert got[0].sql == "CREATE TABLE t (a TEXT DEFAULT ';');"
    assert got[1].sql.startswith("CREATE TRIGGER g") and got[1].sql.endswith("END;")
    assert got[2].sql == "INSERT INTO t VALUES ('it''s; fine')\n;"
    assert got[3].sql == "INSERT INTO t VALUES (1)  -- no semicolon at the end"
    conn = sqlite3.connect(":memory:")
    for st in got:
        conn.execute(st.sql)
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (2,)


def test_split_drops_empty_statements_and_trailing_comments() -> None:
    assert split_statements(";;\n  ;\n-- end\n") == []
    assert split_statements("SELECT 1;;\n/* tail */") == [Statement(1, "SELECT 1;")]
    assert split_statements("") == []


def test_split_is_linear_in_semicolons_inside_strings() -> None:
    """A data migration with a huge string full of ';' must not take quadratic time."""
    text = "INSERT INTO t VALUES ('" + "a;" * 200_000 + "');\n" + "SELECT 1;\n" * 20_000
    started = time.monotonic()
    got = split_statements(text)
    assert time.monotonic() - started < 2  # ~0.1 s measured; a quadratic splitter is far slower
    assert len(got) == 20_001 and got[-1] == Statement(20_001, "SELECT 1;")


# --------------------------------------------------------------------------- running


def test_failing_step_rolls_back_its_ddl_and_names_the_line(tmp_path: Path) -> None:
    catalog = migrations.load(make(tmp_path, {"0001_a.sql": (
        "CREATE TABLE t (a UNIQUE);\n\nINSERT INTO t VALUES (1);\nINSERT INTO t VALUES (1);\n")}))
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(MigrationError) as info:
        catalog.migrations[0].run(conn)
    conn.execute("ROLLBACK")
    assert info.value.line == 4
    assert str(info.value).startswith("0001_a.sql:4: UNIQUE constraint failed")
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_python_step_that_commits_is_refused_at_run_time_too(tmp_path: Path) -> None:
    """What static checks cannot see (SQL built at run time) is caught after the call."""
    catalog = migrations.load(make(tmp_path, {
        "0001_a.py": "def migrate(conn):\n    conn.execute('CREATE TABLE t (a)')\n"
                     "    end = 'COMM' + 'IT'\n    conn.execute(end)\n"}))
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(MigrationError, match="transaction ended inside migrate"):
        catalog.migrations[0].run(conn)


def test_dry_run_finds_steps_that_fail_on_an_empty_database(tmp_path: Path) -> None:
    catalog = migrations.load(make(tmp_path, {
        "0001_a.sql": OK, "0002_b.sql": "CREATE INDEX i ON t (a);\n\nALTER TABLE notes ADD "
                      "COLUMN x;\n", "0003_c.sql": OK}))
    found = migrations.dry_run(catalog)
    assert [(Path(p.file).name, p.line) for p in found] == [("0002_b.sql", 3)]
    assert "fails on an empty database: no such table: notes" in found[0].message


def test_dry_run_locates_a_python_step_that_raises(tmp_path: Path) -> None:
    catalog = migrations.load(make(tmp_path, {
        "0001_a.py": "def migrate(conn):\n    x = 1\n    raise RuntimeError('boom')\n"}))
    found = migrations.dry_run(catalog)
    assert [(p.line, p.message) for p in found] == [
        (3, "fails on an empty database: RuntimeError: boom")]


def test_dry_run_runs_checks_read_only(tmp_path: Path) -> None:
    catalog = migrations.load(make(tmp_path, {
        "0001_a.sql": OK, "checks/0001_ok.sql": "SELECT a FROM t WHERE a IS NULL;\n",
        "checks/0001_bad.sql": "SELECT nope FROM t;\n"}))
    found = migrations.dry_run(catalog)
    assert [(Path(p.file).name, p.message) for p in found] == [
        ("0001_bad.sql", "check query fails: no such column: nope")]


# --------------------------------------------------------------------------- checksums


def test_edited_or_removed_applied_migration_is_named_with_how_many_tenants_have_it(
        tmp_path: Path) -> None:
    d = make(tmp_path, {"0001_a.sql": OK, "0002_b.sql": "CREATE TABLE u (a);\n"})
    catalog = migrations.load(d)
    recorded = {1: ("a", catalog.migrations[0].sha256), 2: ("b", "0" * 64), 3: ("c", "1" * 64)}
    counts = {1: 5, 2: 1, 3: 0}
    found = migrations.verify_recorded(catalog, recorded, counts.__getitem__)
    assert [(Path(p.file).name, p.message.split(" (")[0]) for p in found] == [
        ("0002_b.sql", "edited after it was applied: 1 tenant has version 2"),
        ("0003_c", "migration 0003_c was applied"),
    ]
    assert "new migration 0003_<slug>" in found[0].hint
    assert "0 tenants have it" in found[1].message
    assert migrations.verify_recorded(catalog, {1: recorded[1]}, counts.__getitem__) == []


def test_engine_refuses_the_run_when_a_recorded_checksum_differs(tmp_path: Path) -> None:
    """engine.verify_catalog against a real registry: the check that runs before any
    tenant is touched, in apply, plan and validate."""
    d = make(tmp_path, {"0001_a.sql": OK, "0002_b.sql": "CREATE TABLE u (a);\n"})
    config = tmp_path / "tenants.yaml"
    config.write_text("version: 1\nregions: {eu: {}}\ntenants: {a: {region: eu}, "
                      "b: {region: eu}, c: {region: eu, schema: 1}}\n")
    inputs = engine.load(config)
    reg = Registry.open(inputs.desired.settings.central)
    try:
        with reg.transaction():
            for m in inputs.catalog.migrations:
                reg.record_migration(m.version, m.name, m.sha256)
            for name, version in (("a", 2), ("b", 2), ("c", 1)):
                reg.upsert_tenant(name, "eu", tmp_path / "data" / "eu" / f"{name}.db", version,
                                  "active")
        engine.verify_catalog(inputs, reg.snapshot())  # unchanged: no complaint
        (d / "0001_a.sql").write_text("CREATE TABLE t (a, b);\n")
        with pytest.raises(InvalidInput) as info:
            engine.verify_catalog(engine.load(config), reg.snapshot())
    finally:
        reg.close()
    (p,) = info.value.problems
    assert p.file == str(d / "0001_a.sql")
    assert "edited after it was applied: 3 tenants have version 1" in p.message


def test_catalog_value_is_immutable(tmp_path: Path) -> None:
    catalog = migrations.load(make(tmp_path, {"0001_a.sql": OK}))
    assert isinstance(catalog, Catalog)
    with pytest.raises(AttributeError):
        catalog.migrations[0].sha256 = "x"  # type: ignore[misc]


def test_random_corruption_of_the_shipped_catalog_only_ever_yields_located_problems(
        tmp_path: Path) -> None:
    """Whatever a half-saved or mangled migration holds, loading (and the validate dry
    run) reports problems; it never escapes as another exception."""
    rng = random.Random(20261126)
    tokens = [";", "'", '"', "--", "/*", "*/", "BEGIN", "END", "COMMIT;", "\n", "(", ")",
              "\x00", "\ufeff", "def migrate(", "conn.commit()", "raise SystemExit", "\t",
              "CREATE TRIGGER g AFTER INSERT ON notes BEGIN"]
    for i in range(150):
        d = tmp_path / f"m{i}"
        shutil.copytree(REPO / "migrations", d, ignore=shutil.ignore_patterns("__pycache__"))
        victim = rng.choice(sorted(p for p in d.rglob("*") if p.is_file()))
        text = victim.read_text()
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(text) + 1)
            text = text[:pos] + rng.choice(tokens) + text[pos + rng.randint(0, 2):]
        victim.write_text(text)
        try:
            migrations.dry_run(migrations.load(d))
        except InvalidInput as exc:
            assert exc.problems and all(p.hint for p in exc.problems)
