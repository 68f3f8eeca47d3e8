"""Schema drift end to end: real tenant files changed by hand behind the reconciler's back,
the real ``reconcile`` command (and daemon) judging them against the catalog's reference."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Fleet
from tests.e2e.test_daemon import Daemon, config_text, eventually
from tests.e2e.test_daemon import start as start  # the daemon fixture

V1 = """
CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE);
CREATE TABLE notes (
    id INTEGER PRIMARY KEY,
    user_id INTEGER REFERENCES users(id),
    title TEXT NOT NULL,
    body TEXT NOT NULL DEFAULT ''
);
CREATE INDEX notes_by_user ON notes (user_id);
CREATE VIEW recent_notes AS SELECT id, title FROM notes ORDER BY id DESC LIMIT 10;
"""
V2 = "ALTER TABLE notes ADD COLUMN color TEXT DEFAULT 'red';\n"


def rebuild_notes(columns: str) -> str:
    """SQL rebuilding ``notes`` with ``columns`` (a hand "fix" the way people do it)."""
    return f"""
    DROP VIEW recent_notes;
    CREATE TABLE notes_new ({columns});
    INSERT INTO notes_new (id, user_id, title, body) SELECT id, user_id, title, body FROM notes;
    DROP TABLE notes;
    ALTER TABLE notes_new RENAME TO notes;
    CREATE INDEX notes_by_user ON notes (user_id);
    CREATE VIEW recent_notes AS SELECT id, title FROM notes ORDER BY id DESC LIMIT 10;
    """


# tenant → (what is done to its file by hand, the summary the plan must show)
DRIFTS: dict[str, tuple[str, str]] = {
    "aaron": ("CREATE INDEX notes_by_day ON notes (title);", "extra index notes_by_day"),
    "bob": ("ALTER TABLE notes DROP COLUMN body;", "notes.body missing"),
    "carl": (rebuild_notes("id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), "
                           "title TEXT NOT NULL, body TEXT NOT NULL DEFAULT 'x'"),
             "notes.body: default 'x' (reference: '')"),
    "dave": ("CREATE TRIGGER notes_audit AFTER INSERT ON notes BEGIN SELECT 1; END;",
             "extra trigger notes_audit"),
    "erin": (rebuild_notes("id INTEGER PRIMARY KEY, title TEXT NOT NULL, "
                           "user_id INTEGER REFERENCES users(id), body TEXT NOT NULL DEFAULT ''"),
             "table notes changed (column order id, title, user_id, body (reference: id, "
             "user_id, title, body))"),
    "fred": ("DROP VIEW recent_notes; CREATE VIEW recent_notes AS SELECT id, title, body "
             "FROM notes ORDER BY id DESC LIMIT 10;",
             "view recent_notes changed (its SQL differs)"),
}
CLEAN = ("gina", "hank")


def hand_edit(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(sql)
    finally:
        conn.close()


def tenants() -> dict[str, dict[str, Any]]:
    return {name: {"region": "eu"} for name in (*DRIFTS, *CLEAN)}


@pytest.fixture
def drifted(fleet: Fleet) -> Fleet:
    """Eight tenants created at v1; six then changed by hand, each in another way."""
    import shutil
    shutil.rmtree(fleet.migrations)
    fleet.write_migration("0001_notes.sql", V1)
    fleet.write_migration("0002_colors.sql", V2)
    fleet.declare(tenants(), schema=1)
    assert fleet.run("apply").returncode == 0
    for name, (sql, _summary) in DRIFTS.items():
        hand_edit(fleet.path(name, "eu"), sql)
    return fleet


def plan_lines(fleet: Fleet) -> dict[str, str]:
    out = fleet.run("plan")
    assert out.returncode in (0, 2), out.stderr
    return {line.split()[2]: line for line in out.stdout.splitlines()
            if line.startswith("  ! drift")}


def test_each_kind_of_drift_is_reported_with_its_summary(drifted: Fleet) -> None:
    lines = plan_lines(drifted)
    assert set(lines) == set(DRIFTS)
    for name, (_sql, summary) in DRIFTS.items():
        assert lines[name].split("v1", 1)[1].strip() == summary, lines[name]
    out = drifted.run("drift")
    assert out.returncode == 3
    assert "! drift aaron v1: extra index notes_by_day" in out.stdout
    assert "repair: DROP INDEX notes_by_day;" in out.stdout
    assert "repair: ALTER TABLE notes ADD COLUMN body TEXT NOT NULL DEFAULT '';" in out.stdout
    assert "Drift: 6 of 8 tenants differ" in out.stdout
    assert drifted.run("drift", "gina", "hank").returncode == 0


def test_block_policy_migrates_only_the_clean_tenants_and_exits_3(drifted: Fleet) -> None:
    drifted.declare(tenants())  # target latest: v2
    before = {n: drifted.digests(drifted.data / "eu").get(f"{n}.db") for n in DRIFTS}
    out = drifted.run("apply")
    assert out.returncode == 3, out.stdout + out.stderr
    for name in DRIFTS:
        assert drifted.user_version(drifted.path(name, "eu")) == 1, name
        assert f"problem  drift     {name} eu: " in out.stdout  # results name the region
        assert "not migrated to v2 (drift: block)" in out.stdout
        assert drifted.digests(drifted.data / "eu").get(f"{name}.db") == before[name]
    for name in CLEAN:
        assert drifted.user_version(drifted.path(name, "eu")) == 2
    events = drifted.registry("SELECT tenant FROM events WHERE action = 'drift'")
    assert sorted(t for (t,) in events) == sorted(DRIFTS)  # once each, on first sight
    assert drifted.run("apply").returncode == 3
    assert len(drifted.registry("SELECT tenant FROM events WHERE action = 'drift'")) == 6


def test_warn_policy_migrates_drifted_tenants_and_still_reports_them(drifted: Fleet) -> None:
    drifted.declare(tenants(), drift="warn")
    lines = plan_lines(drifted)
    assert "migrated anyway (drift: warn)" in lines["aaron"]
    out = drifted.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning  drift     aaron v1: extra index notes_by_day" in out.stdout
    for name in (*DRIFTS, *CLEAN):
        assert drifted.user_version(drifted.path(name, "eu")) == 2, name
    after = plan_lines(drifted)  # still drifted at v2: the hand-made index is still there
    assert "v2  extra index notes_by_day" in after["aaron"]
    status = drifted.run("status", "--schema")
    assert status.returncode == 2
    assert "schema v2: 2/8 match the reference" in status.stdout


def test_ignore_policy_and_ignore_patterns(drifted: Fleet) -> None:
    drifted.declare(tenants(), drift="ignore")
    assert plan_lines(drifted) == {}
    drifted.declare(tenants(), schema=1, drift_ignore=["notes_by_*", "notes_audit"])
    assert set(plan_lines(drifted)) == set(DRIFTS) - {"aaron", "dave"}
    out = drifted.run("drift", "aaron", "--json")
    assert out.returncode == 0 and '"ignored": 1' in out.stdout


def test_invalid_drift_settings_name_file_line_and_column(fleet: Fleet) -> None:
    fleet.write_config("version: 1\nsettings:\n  drift: Warn\n  drift_ignore: ops_*\n"
                       "regions: {eu: {}}\ntenants: {}\n")
    before = fleet.digests(fleet.root)
    out = fleet.run("validate")
    assert out.returncode == 1
    assert "tenants.yaml:3:10: settings.drift must be block, warn or ignore, got 'Warn' — " \
           "write warn" in out.stderr
    assert "tenants.yaml:4:17: settings.drift_ignore must be a list" in out.stderr
    assert "Traceback" not in out.stderr
    assert fleet.digests(fleet.root) == before


def test_repaired_drift_converges_on_the_next_pass(drifted: Fleet) -> None:
    drifted.declare(tenants())
    assert drifted.run("apply").returncode == 3
    hand_edit(drifted.path("aaron", "eu"), "DROP INDEX notes_by_day;")
    hand_edit(drifted.path("dave", "eu"), "DROP TRIGGER notes_audit;")
    out = drifted.run("apply")
    assert "ok       migrate   aaron eu v1 → v2" in out.stdout
    assert "ok       migrate   dave eu v1 → v2" in out.stdout
    assert set(plan_lines(drifted)) == set(DRIFTS) - {"aaron", "dave"}
    assert drifted.user_version(drifted.path("aaron", "eu")) == 2


def test_drift_and_plan_read_without_writing(drifted: Fleet) -> None:
    drifted.declare(tenants())
    before = drifted.tenant_digests()  # every tenant file, and no -wal/-shm beside them
    assert drifted.run("drift", "--all").returncode == 3
    assert drifted.run("plan").returncode == 2
    assert drifted.run("status", "--schema").returncode == 2
    assert drifted.tenant_digests() == before


def test_drift_made_while_the_daemon_runs_is_seen_on_its_next_pass(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    fleet.write_config(config_text({"aaron": {"region": "eu"}, "bob": {"region": "eu"}},
                                   interval="1s"))
    d = start(fleet)
    d.wait_summary("2 in sync")
    hand_edit(fleet.path("aaron", "eu"), "CREATE INDEX ops_typo ON notes (title);")

    def reported() -> bool:
        return any(e.get("event") == "drift" and e.get("tenant") == "aaron"
                   for e in d.log_events())
    eventually(reported, what="drift logged")
    d.wait_summary("1 in sync, 1 problem")  # plural only from 2 on
    since = len(d.notify.collect())
    hand_edit(fleet.path("aaron", "eu"), "DROP INDEX ops_typo;")
    d.notify.wait_for(lambda m: "STATUS=2 in sync" in m, since=since)
    assert d.stop() == 0
    assert fleet.registry("SELECT COUNT(*) FROM schema_checks WHERE drift IS NOT NULL") == [(0,)]


def test_drift_living_only_in_the_wal_is_seen(drifted: Fleet) -> None:
    path = drifted.path("gina", "eu")
    before = drifted.run("apply")  # remembers every file's schema key
    assert before.returncode == 3
    holder = sqlite3.connect(path)  # an application keeps the file open: no checkpoint
    holder.execute("PRAGMA wal_autocheckpoint = 0")
    holder.execute("CREATE INDEX notes_by_title ON notes (title)")
    holder.commit()
    try:
        assert Path(f"{path}-wal").exists()
        with open(path, "rb") as f:  # the file's own header still has the old cookie
            header = f.read(100)
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA schema_version").fetchone()[0] != \
            int.from_bytes(header[40:44], "big")
        conn.close()
        assert "extra index notes_by_title" in plan_lines(drifted)["gina"]
    finally:
        holder.close()
