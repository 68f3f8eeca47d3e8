"""The structural schema comparison (``reconciler.schema``) on real SQLite databases."""

from __future__ import annotations

import sqlite3

import pytest

from reconciler import schema
from reconciler.schema import Difference

BASE = """
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);
CREATE TABLE notes (
    id INTEGER PRIMARY KEY,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    color TEXT DEFAULT 'red',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y', 'now'))
);
CREATE INDEX notes_by_user ON notes (user_id, created_at DESC);
CREATE INDEX notes_open ON notes (title) WHERE color IS NOT NULL;
CREATE VIEW recent AS SELECT id, title FROM notes ORDER BY created_at DESC;
CREATE TRIGGER notes_title AFTER UPDATE ON notes BEGIN SELECT 1; END;
"""


def fingerprint(sql: str) -> schema.Schema:
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(sql)
        return schema.read(conn)
    finally:
        conn.close()


def diff(changed: str, base: str = BASE) -> tuple[Difference, ...]:
    return schema.compare(fingerprint(base), fingerprint(base + changed if changed.startswith(
        "\n") else changed))


def test_identical_schemas_have_no_differences() -> None:
    assert schema.compare(fingerprint(BASE), fingerprint(BASE)) == ()


def test_whitespace_case_comments_and_quoting_are_not_differences() -> None:
    other = BASE.replace("CREATE INDEX notes_by_user ON notes (user_id, created_at DESC);",
                         'create   index "notes_by_user"\n on [notes](  `user_id` ,'
                         ' created_at desc ) -- why\n;').replace(
        "CREATE VIEW recent AS SELECT id, title FROM notes ORDER BY created_at DESC;",
        'CREATE VIEW "recent" AS /* newest */ select id,title from "notes" order by '
        'created_at DESC;')
    assert schema.compare(fingerprint(BASE), fingerprint(other)) == ()


def test_an_extra_index_is_reported_with_a_drop_as_repair() -> None:
    (d,) = diff("\nCREATE INDEX notes_by_day ON notes (created_at);")
    assert (d.change, d.what, d.name) == ("extra", "index", "notes_by_day")
    assert d.summary() == "extra index notes_by_day"
    assert d.repair == "DROP INDEX notes_by_day;"


def test_a_dropped_column_is_reported_missing_with_add_column_as_repair() -> None:
    dropped = BASE.replace("WHERE color IS NOT NULL", "WHERE title IS NOT NULL")
    (d,) = schema.compare(fingerprint(dropped), fingerprint(
        dropped + "ALTER TABLE notes DROP COLUMN color;"))
    assert d.summary() == "notes.color missing"
    assert d.repair == "ALTER TABLE notes ADD COLUMN color TEXT DEFAULT 'red';"


def test_a_changed_default_is_reported_with_both_values() -> None:
    changed = BASE.replace("color TEXT DEFAULT 'red'", "color TEXT DEFAULT 'blue'")
    (d,) = schema.compare(fingerprint(BASE), fingerprint(changed))
    assert d.summary() == "notes.color: default 'blue' (reference: 'red')"


def test_type_and_not_null_changes_are_reported() -> None:
    changed = BASE.replace("title TEXT NOT NULL", "title VARCHAR(10)")
    (d,) = schema.compare(fingerprint(BASE), fingerprint(changed))
    assert "type VARCHAR (10) (reference: TEXT)" in d.detail
    assert "nullable (reference: NOT NULL)" in d.detail


def test_an_added_trigger_is_reported() -> None:
    (d,) = diff("\nCREATE TRIGGER audit AFTER INSERT ON notes BEGIN SELECT 2; END;")
    assert d.summary() == "extra trigger audit"


def test_a_table_rebuilt_with_another_column_order_is_reported() -> None:
    rebuilt = BASE.replace("""    title TEXT NOT NULL,
    color TEXT DEFAULT 'red',""", """    color TEXT DEFAULT 'red',
    title TEXT NOT NULL,""")
    (d,) = schema.compare(fingerprint(BASE), fingerprint(rebuilt))
    assert (d.what, d.name) == ("table", "notes")
    assert d.detail.startswith("column order id, user_id, color, title")
    assert d.repair.startswith("-- rebuild notes")


def test_an_edited_view_is_reported_with_drop_and_create_as_repair() -> None:
    edited = BASE.replace("ORDER BY created_at DESC;\nCREATE TRIGGER",
                          "ORDER BY id DESC;\nCREATE TRIGGER")
    (d,) = schema.compare(fingerprint(BASE), fingerprint(edited))
    assert d.summary() == "view recent changed (its SQL differs)"
    assert d.repair.startswith("DROP VIEW recent; CREATE VIEW recent AS SELECT id, title FROM "
                               "notes ORDER BY created_at DESC;")


def test_partial_index_condition_and_uniqueness_are_compared() -> None:
    other = BASE.replace("WHERE color IS NOT NULL", "WHERE color = 'red'").replace(
        "CREATE INDEX notes_by_user", "CREATE UNIQUE INDEX notes_by_user")
    found = {d.name: d for d in schema.compare(fingerprint(BASE), fingerprint(other))}
    assert "WHERE color = 'red' (reference: color is not null)" in found["notes_open"].detail
    assert found["notes_by_user"].detail == "UNIQUE"


def test_index_column_order_and_direction_are_compared() -> None:
    other = BASE.replace("(user_id, created_at DESC)", "(user_id, created_at)")
    (d,) = schema.compare(fingerprint(BASE), fingerprint(other))
    assert d.detail == "columns (user_id, created_at) (reference: (user_id, created_at desc))"


def test_foreign_keys_and_unique_constraints_are_compared() -> None:
    other = BASE.replace("ON DELETE CASCADE", "").replace("email TEXT NOT NULL UNIQUE",
                                                           "email TEXT NOT NULL")
    details = sorted(d.detail for d in schema.compare(fingerprint(BASE), fingerprint(other)))
    assert details == ["UNIQUE (email) missing",
                       "extra foreign key (user_id) → users(id)",
                       "foreign key (user_id) → users(id) ON DELETE CASCADE missing"]


def test_missing_and_extra_tables_are_reported() -> None:
    found = diff("\nCREATE TABLE ops_audit (id INTEGER PRIMARY KEY);")
    assert [d.summary() for d in found] == ["extra table ops_audit"]
    gone = schema.compare(fingerprint(BASE + "CREATE TABLE tags (id INTEGER PRIMARY KEY);"),
                          fingerprint(BASE))
    assert [d.summary() for d in gone] == ["table tags missing"]
    assert gone[0].repair == "CREATE TABLE tags (id INTEGER PRIMARY KEY);"


def test_sqlite_internal_tables_are_ignored() -> None:
    auto = "CREATE TABLE seq (id INTEGER PRIMARY KEY AUTOINCREMENT);"
    conn = sqlite3.connect(":memory:")
    conn.executescript(BASE + auto + "INSERT INTO seq DEFAULT VALUES; ANALYZE;")
    names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
    assert {"sqlite_sequence", "sqlite_stat1"} <= names
    assert schema.compare(fingerprint(BASE + auto), schema.read(conn)) == ()


def test_generated_and_strict_without_rowid_tables_are_compared() -> None:
    base = "CREATE TABLE kv (k TEXT PRIMARY KEY, v INT, w INT AS (v * 2)) WITHOUT ROWID;"
    plain = "CREATE TABLE kv (k TEXT PRIMARY KEY, v INT, w INT);"
    details = {d.detail for d in schema.compare(fingerprint(base), fingerprint(plain))}
    assert "hidden/generated 0 (reference: 2)" in details
    assert "WITHOUT ROWID off (reference: on)" in details


def test_virtual_tables_compare_module_arguments_not_shadow_tables() -> None:
    base = "CREATE VIRTUAL TABLE search USING fts5(title, body);"
    assert schema.compare(fingerprint(base), fingerprint(
        "create virtual table search using FTS5( title,  body );")) == ()
    (d,) = schema.compare(fingerprint(base), fingerprint(
        "CREATE VIRTUAL TABLE search USING fts5(title);"))
    assert (d.what, d.name) == ("virtual table", "search")


def test_expression_indexes_compare_their_expressions() -> None:
    base = "CREATE TABLE t (a TEXT); CREATE INDEX t_lower ON t (lower(a));"
    assert schema.compare(fingerprint(base), fingerprint(
        "CREATE TABLE t (a TEXT); CREATE INDEX t_lower ON t (LOWER( a ));")) == ()
    (d,) = schema.compare(fingerprint(base), fingerprint(
        "CREATE TABLE t (a TEXT); CREATE INDEX t_lower ON t (upper(a));"))
    assert d.detail == "columns (upper ( a )) (reference: (lower ( a )))"


def test_equal_master_digests_mean_equal_fingerprints() -> None:
    a, b = sqlite3.connect(":memory:"), sqlite3.connect(":memory:")
    a.executescript(BASE)
    b.executescript(BASE)
    assert schema.master_digest(a) == schema.master_digest(b)
    b.execute("CREATE INDEX x ON notes (title)")
    assert schema.master_digest(a) != schema.master_digest(b)


def test_summary_lists_the_first_differences_then_a_count() -> None:
    diffs = tuple(Difference("extra", "index", f"i{n}") for n in range(6))
    assert schema.summary(diffs) == ("extra index i0; extra index i1; extra index i2; "
                                     "extra index i3; … 2 more")


@pytest.mark.parametrize("sql, want", [
    ("SELECT  \"a\"  FROM [t] -- c\n WHERE `b`='X y'", "select a from t where b = 'X y'"),
    ('SELECT "two words" FROM t', 'select "two words" from t'),
])
def test_normalise(sql: str, want: str) -> None:
    assert schema.normalise(sql) == want
