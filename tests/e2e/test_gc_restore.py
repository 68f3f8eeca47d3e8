"""``reconcile gc`` (the only command that deletes) and ``reconcile restore`` (putting an
operator's copy in service for a missing tenant), through the real CLI (issue 3)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from tests.conftest import Fleet
from tests.e2e.test_relocate_crash import content, seed


def _relocated(fleet: Fleet) -> Path:
    """aaron moved eu → us: returns its retired eu copy."""
    fleet.declare({"aaron": {"region": "us"}, "bob": {"region": "eu"}})
    done = fleet.run("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    [retired] = (fleet.data / "_retired").glob("aaron-eu-*.db")
    return retired


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_gc_deletes_only_retired_copies_older_than_asked_and_says_so(fleet: Fleet) -> None:
    seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=10)
    fresh = _relocated(fleet)
    old = fresh.with_name("bob-us-20200102T030405000Z.db")  # retired long ago
    old.write_bytes(fresh.read_bytes())
    Path(f"{old}-wal").write_bytes(b"")
    keep = {k: v for k, v in fleet.tenant_digests().items() if not k.startswith("_retired")}

    dry = fleet.run("gc", "--retired-older-than", "30d", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would delete  _retired/{old.name}" in dry.stdout and fresh.name not in dry.stdout
    assert old.exists()

    done = fleet.run("gc", "--retired-older-than", "30d")
    assert done.returncode == 0, done.stderr
    assert f"deleted  _retired/{old.name}" in done.stdout
    assert "deleted 1 retired file" in done.stdout and "kept 1" in done.stdout
    assert not old.exists() and not Path(f"{old}-wal").exists() and fresh.exists()
    assert {k: v for k, v in fleet.tenant_digests().items()
            if not k.startswith("_retired")} == keep  # live files untouched
    events = fleet.registry("SELECT action, detail FROM events WHERE action = 'gc'")
    assert len(events) == 1 and old.name in events[0][1]

    assert "deleted 0 retired files" in fleet.run("gc", "--retired-older-than", "1h").stdout
    assert fresh.exists()


def test_gc_with_a_bad_duration_is_an_error_that_deletes_nothing(fleet: Fleet) -> None:
    seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=1)
    retired = _relocated(fleet)
    bad = fleet.run("gc", "--retired-older-than", "soon")
    assert bad.returncode == 1 and "30d" in bad.stderr
    assert retired.exists()
    assert fleet.run("gc").returncode != 0  # the duration is required: no default deletes


def test_missing_tenant_is_named_and_restored_from_its_retired_copy(fleet: Fleet) -> None:
    before = seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=20)
    retired = _relocated(fleet)
    live = fleet.path("aaron", "us")
    live.unlink()  # the disk lost it
    missing = fleet.run("apply")
    assert missing.returncode == 3
    assert "missing" in missing.stdout and "aaron" in missing.stdout
    assert str(live) in missing.stdout and "reconcile restore aaron --from" in missing.stdout
    assert not live.exists()  # never recreated empty
    assert fleet.registry("SELECT status FROM tenants WHERE name = 'aaron'") == [("missing",)]

    sha = _sha(retired)
    done = fleet.run("restore", "aaron", "--from", str(retired))
    assert done.returncode == 0, done.stderr
    assert str(live) in done.stdout
    assert _sha(retired) == sha and sorted(p.name for p in retired.parent.iterdir()) == [
        retired.name]  # the operator's file is only read: not even a -shm beside it
    assert fleet.registry("SELECT status, path FROM tenants WHERE name = 'aaron'") == [
        ("active", str(live))]
    assert content(fleet, live) == before["aaron"]
    assert fleet.run("apply").returncode == 0
    assert fleet.run("plan").returncode == 0
    history = fleet.run("history", "aaron")
    assert "restore" in history.stdout


def test_restore_refuses_bad_files_and_tenants_in_service_changing_nothing(
        fleet: Fleet, tmp_path: Path) -> None:
    seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=5)
    good = tmp_path / "good.db"
    good.write_bytes(fleet.path("aaron", "eu").read_bytes())
    fleet.path("aaron", "eu").unlink()
    fleet.run("apply")
    before = fleet.digests()

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    truncated = tmp_path / "truncated.db"
    data = fleet.path("bob", "eu").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])

    cases = {
        ("aaron", str(garbage)): "not a usable SQLite database",
        ("aaron", str(newer)): "newer schema",
        ("aaron", str(tmp_path / "absent.db")): "cannot read",
        ("bob", str(good)): "exists",  # bob's file is in service: never replaced
        ("zed", str(good)): "neither registered nor declared",
    }
    corrupt = tmp_path / "corrupt.db"  # opens fine, but an index disagrees with its table
    conn = sqlite3.connect(corrupt)
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.execute("CREATE INDEX t_x ON t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(f"v{i:04d}",) for i in range(200)])
    conn.commit()
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_schema SET sql = 'CREATE INDEX t_x ON t (x DESC)' "
                 "WHERE name = 't_x'")
    conn.commit()
    conn.close()
    cases[("aaron", str(corrupt))] = "integrity_check"
    if len(data) > 8192:
        cases[("aaron", str(truncated))] = "malformed"
    for (tenant, source), message in cases.items():
        bad = fleet.run("restore", tenant, "--from", source)
        assert bad.returncode == 1, (tenant, source, bad.stdout)
        assert message in bad.stderr, (message, bad.stderr)
        assert fleet.digests() == before
    assert not list((fleet.data / "eu").glob(".*"))
    assert fleet.run("restore", "aaron", "--from", str(good)).returncode == 0
