"""End to end through the real CLI: convergence from every starting state, idempotence,
isolated failures, the fleet lock, the registry's own upgrade path."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from reconciler.lock import FleetLock
from reconciler.registry import UPGRADES
from tests.conftest import RECONCILE, Fleet

TENANTS: dict[str, dict[str, Any]] = {
    "aaron": {"region": "eu"},
    "acme": {"region": "us", "domains": ["acme.example.com"]},
    "globex": {"region": "eu"},
}


def converged(fleet: Fleet) -> None:
    """The plan is empty, every declared tenant is active at v3 in the registry and file."""
    plan = fleet.run("plan", "--json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert json.loads(plan.stdout)["changes"] == 0
    rows = fleet.registry("SELECT name, region, path, schema_version, status FROM tenants "
                          "ORDER BY name")
    for name, region, path, version, status in rows:
        assert status == "active", (name, status)
        assert Path(path) == fleet.path(name, region)
        assert fleet.user_version(Path(path)) == version == 3


def add_users(fleet: Fleet, path: Path, emails: list[str]) -> None:
    conn = sqlite3.connect(path)
    conn.executemany("INSERT INTO users (email) VALUES (?)", [(e,) for e in emails])
    conn.commit()
    conn.close()


def test_empty_start_creates_registers_and_routes_every_tenant(fleet: Fleet) -> None:
    fleet.declare(TENANTS)
    r = fleet.run("apply")
    assert r.returncode == 0, r.stdout + r.stderr
    converged(fleet)
    assert fleet.registry("SELECT domain, tenant FROM domains ORDER BY domain") == [
        ("aaron.yoursaas.com", "aaron"), ("acme.example.com", "acme"),
        ("acme.yoursaas.com", "acme"), ("globex.yoursaas.com", "globex")]
    assert fleet.registry("SELECT key, value FROM settings") == [
        ("support_email", "help@yoursaas.com")]
    versions = fleet.registry("SELECT version, name, length(sha256) FROM migrations")
    assert versions == [(1, "create_notes", 64), (2, "pin_notes", 64),
                        (3, "backfill_display_names", 64)]


def test_new_files_and_directories_are_not_world_readable(fleet: Fleet) -> None:
    fleet.declare(TENANTS)
    assert fleet.run("apply").returncode == 0
    for p in [fleet.data, fleet.data / "eu", fleet.path("aaron", "eu"), fleet.central]:
        assert os.stat(p).st_mode & 0o077 == 0, oct(os.stat(p).st_mode)


def test_second_apply_changes_no_byte_and_plans_nothing(fleet: Fleet) -> None:
    fleet.declare(TENANTS)
    assert fleet.run("apply").returncode == 0
    before = fleet.tenant_digests()
    again = fleet.run("apply")
    assert again.returncode == 0, again.stdout + again.stderr
    assert fleet.tenant_digests() == before
    dry = fleet.run("--dry-run")
    assert dry.returncode == 0 and "No changes" in dry.stdout


def test_half_created_fleet_killed_after_linking_a_file_is_adopted_not_duplicated(
        fleet: Fleet) -> None:
    fleet.declare(TENANTS)
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": "create.after_link"})
    assert killed.returncode == -9
    assert fleet.path("aaron", "eu").exists()
    assert fleet.registry("SELECT count(*) FROM tenants") == [(0,)]
    r = fleet.run("apply")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "adopt" in r.stdout
    converged(fleet)
    assert sorted(p.name for p in (fleet.data / "eu").iterdir()) == ["aaron.db", "globex.db"]


def test_half_created_fleet_killed_before_linking_leaves_no_partial_tenant_file(
        fleet: Fleet) -> None:
    fleet.declare(TENANTS)
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": "create.before_link"})
    assert killed.returncode == -9
    assert not fleet.path("aaron", "eu").exists()
    assert fleet.run("apply").returncode == 0
    converged(fleet)
    assert sorted(p.name for p in (fleet.data / "eu").iterdir()) == ["aaron.db", "globex.db"]


def test_files_without_a_registry_are_adopted_with_their_data_kept(fleet: Fleet) -> None:
    fleet.declare({n: {**s, "schema": 1} for n, s in TENANTS.items()})
    assert fleet.run("apply").returncode == 0
    add_users(fleet, fleet.path("aaron", "eu"), ["ann.lee@aaron.test", "bob@aaron.test"])
    for p in fleet.data.glob("central.db*"):
        p.unlink()  # the registry is lost; the tenant files are not
    fleet.declare(TENANTS)
    r = fleet.run("apply")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("adopt") == 3
    converged(fleet)
    assert fleet.rows(fleet.path("aaron", "eu"), "SELECT email, display_name FROM users "
                      "ORDER BY id") == [("ann.lee@aaron.test", "Ann Lee"),
                                         ("bob@aaron.test", "Bob")]


def test_registry_behind_or_ahead_of_the_file_is_corrected_and_logged(fleet: Fleet) -> None:
    fleet.declare(TENANTS)
    assert fleet.run("apply").returncode == 0
    conn = sqlite3.connect(fleet.central)
    conn.execute("UPDATE tenants SET schema_version = 1 WHERE name = 'aaron'")
    conn.execute("UPDATE tenants SET schema_version = 7 WHERE name = 'acme'")
    conn.commit()
    conn.close()
    r = fleet.run("apply")
    assert r.returncode == 0, r.stdout + r.stderr
    converged(fleet)
    events = json.loads(fleet.run("history", "--json").stdout)
    corrections = {e["tenant"]: e["detail"] for e in events if e["action"] == "correct"}
    assert corrections["aaron"]["from_version"] == 1
    assert corrections["acme"]["from_version"] == 7
    assert corrections["acme"]["to_version"] == 3


def test_user_version_living_only_in_the_wal_is_read_correctly(fleet: Fleet) -> None:
    fleet.declare({"aaron": {"region": "eu", "schema": 1}})
    assert fleet.run("apply").returncode == 0
    path = fleet.path("aaron", "eu")
    holder = sqlite3.connect(path)  # keeps the WAL from being checkpointed away
    holder.execute("PRAGMA wal_autocheckpoint = 0")
    for statement in (fleet.migrations / "0002_pin_notes.sql").read_text().split(";"):
        holder.execute(statement)  # migrated behind our back (its schema too: no drift)
    holder.execute("PRAGMA user_version = 2")
    holder.commit()
    try:
        assert Path(f"{path}-wal").exists()
        with open(path, "rb") as f:
            assert int.from_bytes(f.read(100)[60:64], "big") == 1  # header is stale
        fleet.declare({"aaron": {"region": "eu", "schema": 2}})
        r = fleet.run("apply")
        assert r.returncode == 0, r.stdout + r.stderr
        assert fleet.registry("SELECT schema_version FROM tenants") == [(2,)]
        assert "migrate" not in r.stdout  # nothing to do: the WAL said v2 already
    finally:
        holder.close()


def test_missing_file_is_reported_never_recreated_and_exit_3(fleet: Fleet) -> None:
    fleet.declare(TENANTS)
    assert fleet.run("apply").returncode == 0
    fleet.path("globex", "eu").unlink()
    r = fleet.run("apply")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "missing" in r.stdout and str(fleet.path("globex", "eu")) in r.stdout
    assert not fleet.path("globex", "eu").exists()
    assert fleet.registry("SELECT status FROM tenants WHERE name='globex'") == [("missing",)]
    again = fleet.run("apply")
    assert again.returncode == 3 and not fleet.path("globex", "eu").exists()
    status = fleet.run("status")
    assert status.returncode == 2 and "missing" in status.stdout


def test_removed_tenant_is_orphaned_and_untouched(fleet: Fleet) -> None:
    fleet.declare(TENANTS)
    assert fleet.run("apply").returncode == 0
    before = fleet.digests(fleet.data / "eu")
    fleet.declare({k: v for k, v in TENANTS.items() if k != "globex"})
    r = fleet.run("apply")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "orphaned" in r.stdout
    assert fleet.digests(fleet.data / "eu") == before
    assert fleet.registry("SELECT status FROM tenants WHERE name='globex'") == [("orphaned",)]
    # left alone means still routed
    assert ("globex.yoursaas.com", "globex") in fleet.registry("SELECT domain, tenant FROM "
                                                              "domains")


FAILING_0004 = """\
ALTER TABLE notes ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX users_display_name ON users (display_name);
"""


def test_migration_failing_on_one_tenants_data_is_isolated_and_converges_once_fixed(
        fleet: Fleet) -> None:
    fleet.declare(TENANTS, rollout={"canary": 0, "max_failures": 5})
    assert fleet.run("apply").returncode == 0
    acme = fleet.path("acme", "us")
    conn = sqlite3.connect(acme)
    conn.executemany("INSERT INTO users (email, display_name) VALUES (?, 'Sam')",
                     [("sam@a.test",), ("sam@b.test",)])  # data the new index rejects
    conn.commit()
    conn.close()
    acme_before = fleet.rows(acme, "SELECT * FROM users ORDER BY id")
    fleet.write_migration("0004_unique_display_names.sql", FAILING_0004)

    r = fleet.run("apply")
    assert r.returncode == 3, r.stdout + r.stderr
    assert fleet.user_version(acme) == 3  # exactly its previous version
    cols = [c[1] for c in fleet.rows(acme, "PRAGMA table_info(notes)")]
    assert "archived" not in cols  # no partial DDL from the failed step
    assert fleet.rows(acme, "SELECT * FROM users ORDER BY id") == acme_before
    assert fleet.user_version(fleet.path("aaron", "eu")) == 4
    assert fleet.user_version(fleet.path("globex", "eu")) == 4
    assert fleet.registry("SELECT status, schema_version FROM tenants WHERE name='acme'") == [
        ("failed", 3)]

    # not hammered: without --retry-failed the failure waits for its backoff
    waiting = fleet.run("apply")
    assert waiting.returncode == 3 and "retry" in waiting.stdout
    conn = sqlite3.connect(acme)
    conn.execute("UPDATE users SET email = 'sam2@b.test' WHERE email = 'sam@b.test'")
    conn.execute("UPDATE users SET display_name = 'Sam B' WHERE email = 'sam2@b.test'")
    conn.commit()
    conn.close()
    fixed = fleet.run("apply", "--retry-failed")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert fleet.user_version(acme) == 4
    assert fleet.registry("SELECT DISTINCT status FROM tenants") == [("active",)]


SLOW_0004 = """\
import time
from pathlib import Path


def migrate(conn):
    deadline = time.monotonic() + 60
    while Path({hold!r}).exists() and time.monotonic() < deadline:  # the test releases it
        time.sleep(0.02)
    conn.execute("CREATE TABLE slow_marker (x)")
"""


def test_two_reconcilers_never_both_act(fleet: Fleet) -> None:
    fleet.declare({"aaron": {"region": "eu"}})
    assert fleet.run("apply").returncode == 0
    hold = fleet.root.parent / "hold"
    hold.write_text("")
    fleet.write_migration("0004_slow.py", SLOW_0004.format(hold=str(hold)))
    env = {**os.environ, "RECONCILE_CONFIG": str(fleet.config)}
    first = subprocess.Popen([RECONCILE, "apply"], cwd=fleet.root, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    waiting: subprocess.Popen[str] | None = None
    try:
        lock = fleet.data / "central.db.lock"
        deadline = time.time() + 20
        while time.time() < deadline and f"pid {first.pid}" not in lock.read_text():
            time.sleep(0.05)
        second = fleet.run("apply", "--no-wait")
        assert second.returncode == 1
        assert f"pid {first.pid}" in second.stderr
        # waits for the first (it says so), then finds nothing to do
        said = fleet.root.parent / "waiting.err"
        with open(said, "w") as err_file:
            waiting = subprocess.Popen([RECONCILE, "apply"], cwd=fleet.root, env=env,
                                       text=True, stdout=subprocess.PIPE, stderr=err_file)
        deadline = time.time() + 30
        while "waiting for lock" not in said.read_text():
            assert time.time() < deadline and waiting.poll() is None, said.read_text()
            time.sleep(0.05)
        hold.unlink()  # the first pass may finish now
        out, _ = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, out + said.read_text()
        assert "migrate" not in out
    finally:
        if hold.exists():
            hold.unlink()
        if waiting is not None and waiting.poll() is None:
            waiting.kill()
            waiting.wait()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err
    assert fleet.registry("SELECT count(*) FROM events WHERE action='migrate'") == [(1,)]


def test_lock_is_released_when_its_holder_is_killed(fleet: Fleet) -> None:
    fleet.declare({"aaron": {"region": "eu"}})
    fleet.data.mkdir()
    lock = FleetLock(fleet.central)
    lock.acquire(wait=False)
    try:
        held = fleet.run("apply", "--no-wait")
        assert held.returncode == 1 and f"pid {os.getpid()}" in held.stderr
    finally:
        lock.release()
    assert fleet.run("apply", "--no-wait").returncode == 0


def test_registry_from_an_older_version_is_upgraded_in_place(fleet: Fleet) -> None:
    fleet.declare(TENANTS)
    fleet.data.mkdir()
    conn = sqlite3.connect(fleet.central)
    conn.executescript(UPGRADES[0] + "PRAGMA user_version = 1;")
    conn.execute("INSERT INTO settings VALUES ('kept', 'yes')")
    conn.commit()
    conn.close()
    r = fleet.run("apply")
    assert r.returncode == 0, r.stdout + r.stderr
    assert fleet.registry("PRAGMA user_version") == [(len(UPGRADES),)]
    assert fleet.registry("SELECT count(*) FROM runs") == [(1,)]


def test_registry_from_a_newer_reconciler_is_refused_untouched(fleet: Fleet) -> None:
    fleet.declare(TENANTS)
    fleet.data.mkdir()
    conn = sqlite3.connect(fleet.central)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = fleet.digests()
    r = fleet.run("apply")
    assert r.returncode == 1 and "newer" in r.stderr and "Traceback" not in r.stderr
    after = fleet.digests()
    after.pop("central.db.lock")  # the (empty) lock file is not data
    assert after == before


def test_events_carry_the_git_commit_of_tenants_yaml_and_dirty_edits(fleet: Fleet) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(fleet.root), *args], check=True, text=True,
                              capture_output=True).stdout.strip()
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "0")
    fleet.declare({"aaron": {"region": "eu"}})
    (fleet.root / ".gitignore").write_text("data/\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "fleet")
    head = git("rev-parse", "HEAD")
    assert fleet.run("apply").returncode == 0
    assert fleet.registry("SELECT DISTINCT revision FROM events WHERE tenant='aaron'") == [
        (head,)]
    fleet.declare({"aaron": {"region": "eu"}, "bob": {"region": "eu"}})
    assert fleet.run("apply").returncode == 0
    assert fleet.registry("SELECT revision FROM events WHERE tenant='bob' AND "
                          "action='create'") == [(f"{head}+dirty",)]
    plan = fleet.run("--dry-run")
    assert f"@ {head[:7]}+dirty" in plan.stdout


def test_history_lists_events_newest_first_per_tenant(fleet: Fleet) -> None:
    fleet.declare(TENANTS)
    assert fleet.run("apply").returncode == 0
    events = json.loads(fleet.run("history", "aaron", "--json").stdout)
    assert [e["action"] for e in events] == ["domain", "create"]
    assert events[0]["id"] > events[1]["id"]
    assert events[1]["detail"]["to_version"] == 3 and events[1]["duration_ms"] >= 0
    text = fleet.run("history")
    assert text.returncode == 0 and "create" in text.stdout


def test_logs_are_json_lines_with_tenant_action_versions_duration_and_revision(
        fleet: Fleet) -> None:
    fleet.declare({"aaron": {"region": "eu"}})
    r = fleet.run("apply")
    lines = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    create = next(e for e in lines if e["event"] == "create")
    assert create["tenant"] == "aaron" and create["from_version"] == 0
    assert create["to_version"] == 3 and "duration_ms" in create
    assert create["revision"].startswith("sha256:")


def test_usage_errors_exit_1_not_2_which_means_changes_pending(fleet: Fleet) -> None:
    fleet.declare({"aaron": {"region": "eu"}})
    for args in (["--bogus"], ["history", "--limit", "x"], ["nonsense"]):
        r = fleet.run(*args)
        assert r.returncode == 1, (args, r.stderr)
        assert "usage:" in r.stderr and "Traceback" not in r.stderr



def test_migration_that_cannot_work_on_any_database_stops_at_the_canary(fleet: Fleet) -> None:
    fleet.declare(TENANTS)  # canary 1, max_failures 0 by default
    assert fleet.run("apply").returncode == 0
    untouched = {k: v for k, v in fleet.tenant_digests().items() if "aaron" not in k}
    fleet.write_migration("0004_typo.sql", "ALTER TABLE notes ADD COLUMN x INTEGER;\n"
                          "UPDATE nots SET x = 1;\n")
    r = fleet.run("apply")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "no such table: nots" in r.stdout
    assert fleet.user_version(fleet.path("aaron", "eu")) == 3  # canary rolled back
    assert {k: v for k, v in fleet.tenant_digests().items() if "aaron" not in k} == untouched
    assert dict(fleet.registry("SELECT name, status FROM tenants")) == {
        "aaron": "failed", "acme": "pending", "globex": "pending"}
