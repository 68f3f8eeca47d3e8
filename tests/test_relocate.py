"""Relocation's building blocks on real SQLite files, its planner decisions, and the
fault cases that must leave the source in service (issue 3)."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import copyverify, engine, log, relocate
from reconciler.actions import Kind
from reconciler.errors import PermanentError
from reconciler.plan import plan
from reconciler.registry import JournalRow
from tests.conftest import Fleet, make_db
from tests.e2e.test_relocate_crash import content, fill, seed
from tests.test_plan import catalog, desired, kinds, observed, row

# --------------------------------------------------------------------------- fingerprints


def _fp(path: Path) -> copyverify.Fingerprint:
    return copyverify.fingerprint_file(path, 5.0)


def test_backup_copy_has_the_same_fingerprint_and_passes_verification(tmp_path: Path) -> None:
    source = make_db(tmp_path / "a.db", 2, rows=500, wal=True)
    temp = tmp_path / "copy.db"
    relocate.copy_into(source, temp, 5.0)
    assert _fp(temp) == _fp(source)
    copyverify.verify_copy(temp, _fp(source), 5.0)  # does not raise


def test_changed_row_with_the_same_counts_is_caught_by_the_checksum(tmp_path: Path) -> None:
    source = make_db(tmp_path / "a.db", 2, rows=50)
    temp = tmp_path / "copy.db"
    relocate.copy_into(source, temp, 5.0)
    conn = sqlite3.connect(temp)
    conn.execute("UPDATE t SET v = 'changed' WHERE id = 7")
    conn.commit()
    conn.close()
    assert _fp(temp).tables == _fp(source).tables
    with pytest.raises(PermanentError, match="checksum"):
        copyverify.verify_copy(temp, _fp(source), 5.0)


def test_missing_row_or_other_version_is_named_in_the_mismatch(tmp_path: Path) -> None:
    source = make_db(tmp_path / "a.db", 2, rows=50)
    other = make_db(tmp_path / "b.db", 3, rows=49)
    diff = _fp(source).differences(_fp(other))
    assert any("user_version 2" in d for d in diff) and any("row counts" in d for d in diff)


def test_without_rowid_tables_are_fingerprinted_in_key_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    for path, order in ((a, (1, 2, 3)), (b, (3, 1, 2))):
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE k (id INTEGER PRIMARY KEY, v) WITHOUT ROWID")
        conn.executemany("INSERT INTO k VALUES (?, ?)", [(i, f"v{i}") for i in order])
        conn.commit()
        conn.close()
    assert _fp(a) == _fp(b)


def test_copy_includes_rows_still_in_the_wal(tmp_path: Path) -> None:
    source = make_db(tmp_path / "a.db", 1, rows=0, wal=True)
    holder = sqlite3.connect(source)  # keeps the -wal from being checkpointed away
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.executemany("INSERT INTO t (v) VALUES (?)", [("w",)] * 100)
    holder.commit()
    assert os.path.getsize(f"{source}-wal") > 0
    relocate.copy_into(source, tmp_path / "c.db", 5.0)
    holder.close()
    assert _fp(tmp_path / "c.db").tables == (("t", 100),)


# --------------------------------------------------------------------------- moving out


@pytest.fixture
def other_fs() -> Iterator[Path]:
    """A directory on another filesystem (tmpfs), for the cross-device paths."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(Path.cwd()).st_dev:
        pytest.skip("no second filesystem here")
    d = shm / f"reconciler-test-{uuid.uuid4().hex}"
    d.mkdir()
    yield d
    for p in sorted(d.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    d.rmdir()


def test_move_out_on_one_filesystem_renames_with_the_wal(tmp_path: Path) -> None:
    source = make_db(tmp_path / "eu" / "a.db", 1, rows=10, wal=True)
    want = _fp(source)
    target = tmp_path / "_retired" / "a-eu-x.db"
    relocate.move_out(source, target, 5.0, "test")
    assert not any(os.path.lexists(f"{source}{s}") for s in ("", "-wal", "-shm"))
    assert _fp(target) == want


def test_move_out_across_filesystems_copies_verifies_then_unlinks(tmp_path: Path,
                                                                  other_fs: Path) -> None:
    source = make_db(tmp_path / "a.db", 1, rows=300, wal=True)
    inode = os.stat(source).st_ino
    want = _fp(source)
    target = other_fs / "_retired" / "a.db"
    relocate.move_out(source, target, 5.0, "test")
    assert not os.path.lexists(source)
    assert _fp(target) == want and os.stat(target).st_ino != inode
    assert [p.name for p in target.parent.iterdir()] == ["a.db"]  # no temp left behind


def test_move_out_finishes_a_killed_move_leaving_sidecars_behind(tmp_path: Path) -> None:
    source = make_db(tmp_path / "a.db", 1, rows=3)
    target = tmp_path / "r" / "a.db"
    target.parent.mkdir()
    os.rename(source, target)  # as if killed right after the main file was renamed
    Path(f"{source}-wal").write_bytes(b"")
    relocate.move_out(source, target, 5.0, "test")
    assert not os.path.lexists(f"{source}-wal") and os.path.exists(f"{target}-wal")


def test_stamps_sort_like_time_and_round_trip() -> None:
    a, b = relocate.stamp(1_700_000_000.25), relocate.stamp(1_700_000_001.5)
    assert a < b and "-" not in a
    assert relocate.unstamp(a) == pytest.approx(1_700_000_000.25, abs=0.001)
    assert relocate.unstamp("not-a-stamp") is None


# --------------------------------------------------------------------------- planning


def _journal(action: str, phase: str, source: str, dest: str) -> JournalRow:
    return JournalRow("aaron", action, phase, source, dest, dest + ".tmp", "t0", None)


def test_interrupted_relocation_is_resumed_first_and_its_migration_follows() -> None:
    j = _journal("relocate", "verify", "/fleet/data/eu/aaron.db", "/fleet/data/us/aaron.db")
    p = plan(desired({"aaron": {"region": "us"}}),
             observed([row("aaron", "eu", 2, status="relocating")],
                      files={"eu/aaron.db": 2}, journal={"aaron": j}), catalog())
    assert kinds(p) == ["relocate", "migrate"]
    resume = p.actions[0]
    assert "resume" in resume.detail and resume.path == Path(j.dest or "")
    assert p.actions[1].path == Path("/fleet/data/us/aaron.db")


def test_interrupted_relocation_to_a_region_no_longer_wanted_heads_for_the_new_one() -> None:
    j = _journal("relocate", "copy", "/fleet/data/eu/aaron.db", "/fleet/data/us/aaron.db")
    p = plan(desired({"aaron": {"region": "eu"}}),
             observed([row("aaron", "eu", 2, status="relocating")],
                      files={"eu/aaron.db": 2}, journal={"aaron": j}), catalog())
    # the module rolls back (or finishes, then relocates again) so the file ends up at
    # the wanted path, where the migration then runs
    assert kinds(p) == ["relocate", "migrate"]
    assert [a.path for a in p.actions] == [Path("/fleet/data/eu/aaron.db")] * 2


def test_interrupted_operation_of_an_undeclared_tenant_is_finished_not_orphaned() -> None:
    j = _journal("archive", "move", "/fleet/data/eu/aaron.db", "/fleet/data/_archive/a.db")
    p = plan(desired({"bob": {"region": "eu"}}, prune=True),
             observed([row("aaron", status="relocating"), row("bob")],
                      files={"eu/bob.db": 3}, journal={"aaron": j}), catalog())
    assert kinds(p, "aaron") == ["archive"]
    assert p.for_tenant("aaron")[0].path is None


def test_relocation_into_a_region_with_a_bad_directory_is_invalid_for_that_tenant() -> None:
    p = plan(desired({"aaron": {"region": "us"}, "bob": {"region": "eu"}}),
             observed([row("aaron", "eu"), row("bob", "eu")],
                      files={"eu/aaron.db": 3, "eu/bob.db": 3},
                      region_problems={"us": "region directory is a symlink out of the tree"}),
             catalog())
    assert kinds(p, "aaron") == ["invalid"] and kinds(p, "bob") == []
    assert p.for_tenant("aaron")[0].kind is Kind.INVALID


# --------------------------------------------------------------------------- faults


def test_copy_that_does_not_verify_aborts_and_leaves_the_source_in_service(
        fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    before = seed(fleet, {"aaron": "eu"}, notes=100)
    fleet.declare({"aaron": {"region": "us"}})
    real_copy = relocate.copy_into

    def damaged_copy(source: Path, temp: Path, busy_timeout: float,
                     during: str | None = None) -> None:
        real_copy(source, temp, busy_timeout, during)
        conn = sqlite3.connect(temp)  # a bit flip on the way, as a bad disk would do
        conn.execute("UPDATE notes SET body = 'corrupted' WHERE id = 42")
        conn.commit()
        conn.close()

    monkeypatch.setattr(relocate, "copy_into", damaged_copy)
    inputs = engine.load(fleet.config)
    result = engine.run_pass(inputs, log.configure("json", "error"))
    [outcome] = [o for o in result.outcomes if o.action == "relocate"]
    assert outcome.failed and "does not match its source" in (outcome.error or "")
    assert fleet.registry("SELECT region, status FROM tenants") == [("eu", "active")]
    assert fleet.registry("SELECT * FROM journal") == []
    assert list((fleet.data / "us").iterdir()) == []  # no copy, no temp
    assert content(fleet, fleet.path("aaron", "eu")) == before["aaron"]


def test_busy_source_is_retried_later_and_changes_nothing(fleet: Fleet) -> None:
    seed(fleet, {"aaron": "eu"}, notes=10, busy_timeout="200ms")
    fleet.declare({"aaron": {"region": "us"}}, busy_timeout="200ms")
    app = sqlite3.connect(fleet.path("aaron", "eu"), isolation_level=None)
    app.execute("BEGIN IMMEDIATE")  # an application mid-transaction, for too long
    try:
        busy = fleet.run("apply")
    finally:
        app.execute("ROLLBACK")
        app.close()
    assert busy.returncode == 3 and "busy" in busy.stdout
    assert fleet.registry("SELECT region, status FROM tenants") == [("eu", "active")]
    assert fleet.registry("SELECT * FROM journal") == []
    fill(fleet.path("aaron", "eu"), 1)
    assert fleet.run("apply").returncode == 0
    assert fleet.registry("SELECT region, status FROM tenants") == [("us", "active")]


# ------------------------------------------------------- comparison with the source in SQL


def _copy_then(tmp_path: Path, sql: str, setup: str = "") -> tuple[Path, Path]:
    source = make_db(tmp_path / "a.db", 2, rows=50)
    if setup:
        conn = sqlite3.connect(source)
        conn.executescript(setup)
        conn.close()
    temp = tmp_path / "copy.db"
    relocate.copy_into(source, temp, 5.0)
    copyverify.verify_copy(temp, copyverify.fingerprint_file(source, 5.0, content=False), 5.0,
                         source)  # an exact copy passes
    conn = sqlite3.connect(temp)
    conn.executescript(sql)
    conn.close()
    return source, temp


@pytest.mark.parametrize(("setup", "change"), [
    ("", "UPDATE t SET v = 'changed' WHERE id = 7;"),
    ("", "UPDATE t SET v = NULL WHERE id = 8;"),
    ("", "DELETE FROM t WHERE id = 9; INSERT INTO t (id, v) VALUES (1000, 'row8');"),
    ("CREATE TABLE c (x TEXT COLLATE NOCASE); INSERT INTO c VALUES ('Abc');",
     "UPDATE c SET x = 'abc';"),  # equal under the column's collation, not in bytes
    ("CREATE TABLE n (x); INSERT INTO n VALUES (1);", "UPDATE n SET x = 1.0;"),  # 1 = 1.0
    ("CREATE TABLE k (id TEXT PRIMARY KEY, v) WITHOUT ROWID; INSERT INTO k VALUES ('a', 1);",
     "UPDATE k SET v = 2;"),
])
def test_sql_comparison_with_the_source_catches_any_changed_row(
        tmp_path: Path, setup: str, change: str) -> None:
    source, temp = _copy_then(tmp_path, change, setup)
    expected = copyverify.fingerprint_file(source, 5.0, content=False)
    assert expected.digest == ""
    with pytest.raises(PermanentError, match="content differs"):
        copyverify.verify_copy(temp, expected, 5.0, source)
    with pytest.raises(PermanentError, match="checksum"):  # the hashing path agrees
        copyverify.verify_copy(temp, copyverify.fingerprint_file(source, 5.0), 5.0)


def test_sql_comparison_names_schema_and_count_differences(tmp_path: Path) -> None:
    source, temp = _copy_then(tmp_path, "CREATE INDEX t_v ON t (v);")
    with pytest.raises(PermanentError, match="schema differs"):
        copyverify.verify_copy(temp, copyverify.fingerprint_file(source, 5.0, content=False), 5.0,
                             source)
    (tmp_path / "x").mkdir()
    source2, temp2 = _copy_then(tmp_path / "x", "DELETE FROM t WHERE id = 3;")
    with pytest.raises(PermanentError, match="row counts"):
        copyverify.verify_copy(temp2, copyverify.fingerprint_file(source2, 5.0, content=False),
                             5.0, source2)


@pytest.mark.parametrize("columns", ["rowid, v", "rowid, oid, _rowid_"])
def test_sql_comparison_works_when_columns_shadow_rowid_aliases(
        tmp_path: Path, columns: str) -> None:
    first = columns.split(",")[0]
    setup = (f"CREATE TABLE s ({columns}); "
             f"INSERT INTO s ({first}) VALUES (5); INSERT INTO s ({first}) VALUES (6);")
    source, temp = _copy_then(tmp_path, f"UPDATE s SET {first} = 7 WHERE {first} = 6;", setup)
    with pytest.raises(PermanentError, match="content differs in s"):
        copyverify.verify_copy(temp, copyverify.fingerprint_file(source, 5.0, content=False), 5.0,
                             source)


# --------------------------------------------------------------------------- page comparison


@pytest.mark.parametrize("wal", [False, True])
def test_backup_copy_of_an_unchanged_source_is_page_identical(tmp_path: Path, wal: bool
                                                              ) -> None:
    source = make_db(tmp_path / "a.db", 2, rows=3000, wal=wal)
    writer = sqlite3.connect(source)  # keeps a WAL source's -wal with committed frames
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("UPDATE t SET v = 'in the wal' WHERE id < 100")
    writer.commit()
    temp = tmp_path / "copy.db"
    relocate.copy_into(source, temp, 5.0)
    assert copyverify.main_file_holds_content(source, 5.0)  # WAL: checkpointed passively
    assert copyverify.same_pages(temp, source)
    writer.close()


def test_page_comparison_is_not_trusted_while_the_main_file_lags_the_wal(
        tmp_path: Path) -> None:
    """A reader on an old snapshot keeps the newest frames out of the main file; a copy
    of that stale main file is page-identical to it, yet misses a committed change."""
    source = make_db(tmp_path / "a.db", 2, rows=200, wal=True)
    reader = sqlite3.connect(source, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # holds its snapshot
    writer = sqlite3.connect(source)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("UPDATE t SET v = 'committed after the snapshot' WHERE id = 5")
    writer.commit()
    stale = tmp_path / "stale.db"
    stale.write_bytes(source.read_bytes())  # what a copy that ignored the -wal would hold
    assert copyverify.same_pages(stale, source)  # byte for byte, yet not the content:
    assert not copyverify.main_file_holds_content(source, 5.0)  # which is why this is asked
    expected = copyverify.fingerprint_file(source, 5.0, content=False)
    with pytest.raises(PermanentError, match="content differs in t"):
        copyverify.verify_copy(stale, expected, 5.0, source)
    reader.close()
    writer.close()


def test_page_comparison_ignores_only_the_header_bytes_a_copy_may_change(
        tmp_path: Path) -> None:
    source = make_db(tmp_path / "a.db", 2, rows=300)
    temp = tmp_path / "copy.db"
    relocate.copy_into(source, temp, 5.0)
    data = bytearray(temp.read_bytes())
    for offset in copyverify.HEADER_VOLATILE:  # journal mode, change counter, versions
        data[offset] ^= 0xFF
    temp.write_bytes(bytes(data))
    assert copyverify.same_pages(temp, source)
    for offset in (20, 28, 44, 60, 4096 + 100, len(data) - 1):  # reserved bytes, size,
        changed = bytearray(data)                              # format, user_version, pages
        changed[offset] ^= 0x01
        temp.write_bytes(bytes(changed))
        assert not copyverify.same_pages(temp, source), offset
    temp.write_bytes(bytes(data) + b"\0" * 4096)  # one page longer
    assert not copyverify.same_pages(temp, source)


def test_a_changed_page_falls_back_to_the_row_comparison_which_decides(
        tmp_path: Path) -> None:
    source = make_db(tmp_path / "a.db", 2, rows=300)
    expected = copyverify.fingerprint_file(source, 5.0, content=False)
    temp = tmp_path / "copy.db"
    relocate.copy_into(source, temp, 5.0)
    conn = sqlite3.connect(temp)
    conn.execute("VACUUM")  # other pages, same rows
    conn.close()
    assert not copyverify.same_pages(temp, source)
    copyverify.verify_copy(temp, expected, 5.0, source)  # equal rows: passes
    conn = sqlite3.connect(temp)
    conn.execute("UPDATE t SET v = 'x' WHERE id = 3")
    conn.commit()
    conn.close()
    with pytest.raises(PermanentError, match="content differs in t"):
        copyverify.verify_copy(temp, expected, 5.0, source)
