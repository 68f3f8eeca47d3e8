"""A connection the router hands out reaches only its own tenant's file (issue 15 §5).

Each test plays the SQL an injected query would try against a real registry and real
tenant files, and then checks with a separate connection that nothing outside the
tenant's own file was opened, created or changed."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from reconciler.registry import Registry
from reconciler.routing import Router
from tests.conftest import Fleet
from tests.test_routing import add_tenant


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def other_tenant(reg: Registry) -> Path:
    add_tenant(reg, "aaron")
    other = add_tenant(reg, "bob")
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE secrets (v TEXT)")
        c.execute("INSERT INTO secrets VALUES ('bob only')")
    c.close()
    return other


@pytest.mark.parametrize("sql", [
    "ATTACH DATABASE '{other}' AS stolen",
    "ATTACH DATABASE 'file:{other}?mode=ro' AS stolen",
    "ATTACH '{new}' AS fresh",
    "VACUUM INTO '{new}'",
    "DETACH DATABASE central",
])
def test_an_injected_attach_detach_or_vacuum_into_is_not_authorized(
        reg: Registry, router: Router, sql: str, tmp_path: Path) -> None:
    other = other_tenant(reg)
    new = tmp_path / "exfiltrated.db"
    before = digest(other)
    with router.connect("aaron.yoursaas.com") as db:
        # VACUUM INTO is refused by its internal ATTACH: "authorization denied"
        with pytest.raises(sqlite3.DatabaseError,
                           match=r"not authorized|authorization denied"):
            db.execute(sql.format(other=other, new=new))
        names = [r[1] for r in db.execute("PRAGMA database_list")]
        assert names == ["main", "central"]
    assert not new.exists()
    assert digest(other) == before


@pytest.mark.parametrize("sql", [
    "INSERT INTO central.domains (domain, tenant) VALUES ('evil.example', 'aaron')",
    "UPDATE central.tenants SET path = '/tmp/x.db' WHERE name = 'aaron'",
    "DELETE FROM central.tenants",
    "DROP TABLE central.settings",
    "CREATE TABLE central.mine (x)",
    "ALTER TABLE central.settings ADD COLUMN x",
    "CREATE INDEX central.ix ON settings(value)",
])
def test_the_registry_cannot_be_written_through_a_tenant_connection(
        reg: Registry, router: Router, fleet: Fleet, sql: str) -> None:
    add_tenant(reg, "aaron")
    reg.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    rows_before = reg.conn.execute("SELECT name, path, status FROM tenants").fetchall()
    with router.connect("aaron.yoursaas.com") as db, pytest.raises(sqlite3.DatabaseError):
        db.execute(sql)
    assert reg.conn.execute("SELECT name, path, status FROM tenants").fetchall() == rows_before
    assert reg.conn.execute("SELECT domain FROM domains ORDER BY domain").fetchall() == [
        ("aaron.yoursaas.com",)]


@pytest.mark.parametrize("sql", [
    "PRAGMA writable_schema = ON",
    "PRAGMA main.writable_schema = 1",
    "PRAGMA temp_store_directory = '/tmp'",
    "PRAGMA schema_version = 1",
    "SELECT load_extension('/tmp/evil.so')",
])
def test_pragmas_and_functions_that_reach_other_files_are_not_authorized(
        reg: Registry, router: Router, sql: str) -> None:
    add_tenant(reg, "aaron")
    with router.connect("aaron.yoursaas.com") as db, \
            pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        db.execute(sql)


@pytest.mark.parametrize("sql", [
    "PRAGMA journal_mode=DELETE",
    "PRAGMA main.journal_mode = truncate",
    "PRAGMA journal_mode=OFF",
    "PRAGMA wal_checkpoint(TRUNCATE)",
    "PRAGMA wal_checkpoint",
    "PRAGMA central.wal_checkpoint(FULL)",
])
def test_leaving_wal_or_checkpointing_the_registry_is_refused_as_not_authorized(
        reg: Registry, router: Router, sql: str) -> None:
    path = add_tenant(reg, "aaron")
    with router.connect("aaron.yoursaas.com") as db:
        with pytest.raises(sqlite3.DatabaseError, match=r"^not authorized$"):
            db.execute(sql)  # was "disk I/O error", or main left WAL mode silently
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    check.close()


def test_the_application_keeps_full_use_of_its_own_file_and_reads_the_registry(
        reg: Registry, router: Router) -> None:
    path = add_tenant(reg, "aaron")
    with router.connect("aaron.yoursaas.com") as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        db.execute("CREATE INDEX notes_body ON notes(body)")
        db.execute("CREATE TEMP TABLE scratch (x)")
        db.execute("INSERT INTO notes (body) VALUES ('hello')")
        db.execute("CREATE TRIGGER t AFTER INSERT ON notes BEGIN SELECT 1; END")
        db.execute("ALTER TABLE notes ADD COLUMN color TEXT")
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)  # a no-op
        db.commit()
        assert db.execute("PRAGMA main.wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("SELECT value FROM central.settings WHERE key = 'support_email'"
                          ).fetchone() == ("help@yoursaas.com",)
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT body FROM notes").fetchall() == [("hello",)]
    check.close()
