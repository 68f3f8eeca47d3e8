"""Copied and moved fleets, suspensions in the plan, a plan during a pass, and retired
orphans — through the real CLI, with real ``cp -a`` and ``mv`` (issue 12 items 1, 2, 7,
10). The original's files are proven untouched by SHA-256 digests of every file."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from reconciler import registry
from tests.conftest import Fleet
from tests.e2e.test_relocate_crash import content, seed

TENANTS = {"aaron": "eu", "acme": "us", "bob": "eu", "initech": "us"}


def tree_digests(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (tenants.yaml, central.db, -wal, -journal…)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def prod(fleet: Fleet) -> Iterator[tuple[Fleet, dict[str, object]]]:
    """A converged fleet with rows, a tenant whose committed writes sit in its -wal (a
    connection holds it open) and a tenant in rollback mode with a -journal beside it."""
    before: dict[str, object] = dict(seed(fleet, TENANTS, notes=30))
    rollback = sqlite3.connect(fleet.path("initech", "us"), isolation_level=None)
    rollback.execute("PRAGMA journal_mode=PERSIST")  # leaves initech.db-journal behind
    rollback.execute("INSERT INTO notes (user_id, title, body) SELECT user_id, 'r', 'r' "
                     "FROM notes LIMIT 1")
    rollback.close()
    held = sqlite3.connect(fleet.path("aaron", "eu"), isolation_level=None)
    held.execute("PRAGMA wal_autocheckpoint=0")
    held.execute("INSERT INTO notes (user_id, title, body) SELECT user_id, 'w', 'w' "
                 "FROM notes LIMIT 1")  # committed, in aaron.db-wal only
    assert Path(f"{fleet.path('aaron', 'eu')}-wal").stat().st_size > 0
    assert Path(f"{fleet.path('initech', 'us')}-journal").exists()
    for t, r in TENANTS.items():
        before[t] = content(fleet, fleet.path(t, r))
    try:
        yield fleet, before
    finally:
        held.close()


def flat(text: str) -> str:
    """Output with runs of spaces (column padding) folded to one."""
    return re.sub(" {2,}", " ", text)


def cp_a(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)


def edit(f: Fleet, change: object) -> None:
    config = yaml.safe_load(f.config.read_text())
    change(config)  # type: ignore[operator]
    f.write_config(config)


def staged_copy(original: Fleet, tmp_path: Path, us: str) -> tuple[dict[str, str], Fleet]:
    """The original's digests, and its ``cp -a`` copy with region us declared at ``us``."""
    digests = tree_digests(original.root)
    cp_a(original.root, tmp_path / "staging")
    staging = Fleet(tmp_path / "staging")
    edit(staging, lambda c: c["regions"].update(us={"path": us}))
    return digests, staging


def rows(f: Fleet) -> dict[str, tuple[str, str, str]]:
    return {r[0]: (r[1], r[2], r[3]) for r in
            f.registry("SELECT name, region, path, status FROM tenants")}


def test_a_copied_fleet_becomes_its_own_and_never_touches_the_originals_files(
        prod: tuple[Fleet, dict[str, object]], tmp_path: Path) -> None:
    original, before = prod
    original_id = original.registry("SELECT value FROM fleet WHERE key = 'id'")
    digests = tree_digests(original.root)
    cp_a(original.root, tmp_path / "staging")
    staging = Fleet(tmp_path / "staging")

    plan = staging.run("--dry-run")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert "> relocate" not in plan.stdout
    assert f"* fleet copied registry {original.central} → {staging.central}" in flat(plan.stdout)
    assert f"* reroot eu: {original.data / 'eu'} → {staging.data / 'eu'} (2 tenants: aaron, " \
        "bob)" in flat(plan.stdout)

    done = staging.run("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {t: (r, Path(p), s) for t, (r, p, s) in rows(staging).items()} == {
        t: (r, staging.path(t, r), "active") for t, r in TENANTS.items()}
    for t, r in TENANTS.items():
        assert content(staging, staging.path(t, r)) == before[t]
    assert staging.run("--dry-run").returncode == 0
    assert staging.registry("SELECT value FROM fleet WHERE key = 'id'") != original_id
    assert staging.registry("SELECT value FROM fleet WHERE key = 'central'") == [
        (str(staging.central),)]  # a fleet of its own

    # the copy relocates, restores and collects within its own directories only
    edit(staging, lambda c: c["tenants"]["acme"].update(region="eu"))
    assert staging.run("apply").returncode == 0
    [retired] = (staging.data / "_retired").glob("acme-us-*.db")
    staging.path("acme", "eu").unlink()
    assert staging.run("apply").returncode == 3  # missing, not recreated
    restored = staging.run("restore", "acme", "--from", str(retired))
    assert restored.returncode == 0, restored.stderr
    time.sleep(0.01)
    assert staging.run("gc", "--retired-older-than", "1ms").returncode == 0
    assert not retired.exists()

    assert tree_digests(original.root) == digests  # every file, central.db included


def test_a_copy_whose_region_path_was_edited_never_moves_the_originals_file(
        prod: tuple[Fleet, dict[str, object]], tmp_path: Path) -> None:
    original, _before = prod
    digests, staging = staged_copy(original, tmp_path, us="data/us-new")

    plan = staging.run("--dry-run")
    assert f"{original.data / 'us'} → {staging.data / 'us-new'}" in plan.stdout
    assert "> relocate" not in plan.stdout and "! missing acme" in flat(plan.stdout)
    applied = staging.run("apply")
    assert applied.returncode == 3, applied.stdout + applied.stderr  # missing: a human decides
    assert not (staging.data / "_retired").exists()
    assert tree_digests(original.root) == digests
    # the operator moves the copy's files where the copy now declares them: converged
    (staging.data / "us").rename(staging.data / "us-new")
    assert staging.run("apply").returncode == 0
    assert staging.run("--dry-run").returncode == 0
    assert tree_digests(original.root) == digests


def test_a_copy_that_still_declares_the_originals_directory_is_refused(
        prod: tuple[Fleet, dict[str, object]], tmp_path: Path) -> None:
    original, _before = prod
    digests, staging = staged_copy(original, tmp_path, us=str(original.data / "us"))
    staging_before = tree_digests(staging.root)

    for args in (("--dry-run",), ("apply",), ("restore", "acme", "--from",
                                               str(staging.path("acme", "us")))):
        refused = staging.run(*args)
        assert refused.returncode == 1, (args, refused.stdout, refused.stderr)
        assert "is a copy of the fleet at" in refused.stderr
        assert str(original.data / "us") in refused.stderr
        assert "Traceback" not in refused.stderr
    assert tree_digests(original.root) == digests
    assert tree_digests(staging.root) == staging_before


def test_a_moved_fleet_converges_by_rerooting_with_nothing_copied_or_lost(
        prod: tuple[Fleet, dict[str, object]], tmp_path: Path) -> None:
    original, before = prod
    files = sorted(str(p.relative_to(original.root)) for p in original.data.rglob("*.db"))
    subprocess.run(["mv", str(original.root), str(tmp_path / "moved")], check=True)
    moved = Fleet(tmp_path / "moved")

    # the old route (restore from the moved file) is closed: it would copy the data twice
    # and recreate the old tree outside the fleet
    restore = moved.run("restore", "aaron", "--from", str(moved.path("aaron", "eu")))
    assert restore.returncode == 1 and "run `reconcile`" in restore.stderr
    assert not original.root.exists()

    plan = moved.run("--dry-run")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert f"* fleet moved registry {original.central} → {moved.central}" in flat(plan.stdout)
    assert f"{original.data / 'us'} → {moved.data / 'us'} (2 tenants: acme, initech)" \
        in plan.stdout
    assert "missing" not in plan.stdout and "> relocate" not in plan.stdout

    done = moved.run("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {t: (r, Path(p), s) for t, (r, p, s) in rows(moved).items()} == {
        t: (r, moved.path(t, r), "active") for t, r in TENANTS.items()}
    for t, r in TENANTS.items():
        assert content(moved, moved.path(t, r)) == before[t]  # every row
    assert sorted(str(p.relative_to(moved.root)) for p in moved.data.rglob("*.db")) == files
    assert not original.root.exists()
    assert moved.run("--dry-run").returncode == 0
    history = moved.run("history", "aaron")
    assert "reroot" in history.stdout


def test_suspending_shows_in_the_plan_and_unsuspending_is_its_own_change(
        fleet: Fleet) -> None:
    seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=1)
    fleet.declare({"aaron": {"region": "eu", "suspended": True}, "bob": {"region": "eu"}})
    plan = fleet.run("--dry-run")
    assert plan.returncode == 2, plan.stdout
    assert "| suspend aaron" in flat(plan.stdout) and "1 to suspend" in plan.stdout
    assert '"action": "suspend"' in fleet.run("--dry-run", "--json").stdout
    assert fleet.run("apply").returncode == 0
    route = fleet.run("route", "aaron.yoursaas.com")
    assert route.returncode == 1 and "suspended" in route.stderr
    assert fleet.run("--dry-run").returncode == 0

    fleet.declare({"aaron": {"region": "eu"}, "bob": {"region": "eu"}})
    back = fleet.run("--dry-run")
    assert back.returncode == 2 and "^ unsuspend aaron" in flat(back.stdout)
    assert "correct" not in back.stdout
    assert fleet.run("apply").returncode == 0
    assert fleet.run("route", "aaron.yoursaas.com").returncode == 0


HOLD = """
import sqlite3, sys, time
from pathlib import Path
from reconciler.lock import FleetLock
lock = FleetLock(Path(sys.argv[1]))
lock.acquire(wait=False)
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("UPDATE tenants SET status = 'relocating' WHERE name = 'aaron'")  # half done
print("held", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("UPDATE tenants SET status = 'active' WHERE name = 'aaron'")  # the pass ends
db.close()
lock.release()
"""


def test_a_dry_run_during_a_pass_says_so_or_waits_for_it(fleet: Fleet) -> None:
    seed(fleet, {"aaron": "eu"}, notes=1)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(fleet.central), "3"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = fleet.run("--no-wait", "--dry-run")
        assert refused.returncode == 1
        assert "applying a pass on this fleet right now" in refused.stderr
        assert f"pid {holder.pid}" in refused.stderr and "Plan for" not in refused.stdout
        waited = fleet.run("--dry-run")
        # it waited for the pass to end: the half-done state never shows in the plan
        assert waited.returncode == 0, waited.stdout + waited.stderr
        assert "No changes" in waited.stdout and "relocating" not in waited.stdout
        assert "waiting for the pass in progress" in waited.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_retired_orphan_is_no_problem_not_routed_and_kept(fleet: Fleet) -> None:
    seed(fleet, {"aaron": "eu", "oldco": "us"}, notes=1)
    kept = fleet.path("oldco", "us").read_bytes()
    fleet.declare({"aaron": {"region": "eu"}})
    assert fleet.run("apply").returncode == 3  # an orphan: a problem, every run
    assert fleet.run("apply").returncode == 3

    config = yaml.safe_load(fleet.config.read_text())
    config["retired"] = ["oldco"]
    fleet.write_config(config)
    plan = fleet.run("--dry-run")
    assert "retired oldco" in flat(plan.stdout) and "0 problems" in plan.stdout
    assert "- route" in plan.stdout and "oldco.yoursaas.com" in plan.stdout
    assert fleet.run("apply").returncode == 0
    assert fleet.run("apply").returncode == 0
    assert fleet.run("route", "oldco.yoursaas.com").returncode == 1  # not routed
    assert fleet.path("oldco", "us").read_bytes() == kept  # the file is kept
    # cli-ux: status lists only tenants that need a person; --all lists every row
    status = fleet.run("status", "--all")
    assert status.returncode == 0 and "oldco" in status.stdout and "retired" in status.stdout
    assert "oldco" not in fleet.run("status").stdout  # retired: nobody needs to act on it

    config["retired"] = ["aaron"]
    fleet.write_config(config)
    bad = fleet.run("validate")
    assert bad.returncode == 1
    assert "tenants.yaml:" in bad.stderr and "declared under tenants: and listed under " \
        "retired:" in bad.stderr


@pytest.mark.parametrize("how", ["cp -a", "mv"])
def test_a_relocation_killed_before_a_copy_or_move_resumes_on_that_fleets_own_files(
        fleet: Fleet, tmp_path: Path, how: str) -> None:
    before = seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=30)
    fleet.declare({"aaron": {"region": "us"}, "bob": {"region": "eu"}})
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": "relocate:after-copy"})
    assert killed.returncode == -9  # SIGKILL mid-relocation: the journal names its files
    digests = tree_digests(fleet.root)
    subprocess.run([*how.split(), str(fleet.root), str(tmp_path / "other")], check=True)
    other = Fleet(tmp_path / "other")

    plan = other.run("--dry-run")
    assert "> relocate aaron eu → us v3 resume interrupted relocate" in flat(plan.stdout), \
        plan.stdout + plan.stderr
    assert "invalid" not in plan.stdout
    applied = other.run("apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert rows(other)["aaron"] == ("us", str(other.path("aaron", "us")), "active")
    assert content(other, other.path("aaron", "us")) == before["aaron"]
    assert not other.path("aaron", "eu").exists()
    assert len(list((other.data / "_retired").glob("aaron-eu-*.db"))) == 1
    assert other.registry("SELECT * FROM journal") == []
    assert other.run("--dry-run").returncode == 0
    if how == "cp -a":  # the original is untouched, and finishes its own relocation
        assert tree_digests(fleet.root) == digests
        assert fleet.run("apply").returncode == 0
        assert content(fleet, fleet.path("aaron", "us")) == before["aaron"]


def test_an_unfinished_operation_naming_files_nowhere_in_the_fleet_is_not_resumed(
        fleet: Fleet, tmp_path: Path) -> None:
    seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=5)
    fleet.declare({"aaron": {"region": "us"}, "bob": {"region": "eu"}})
    assert fleet.run("apply", env={"RECONCILE_CRASH_AT": "relocate:after-copy"}
                     ).returncode == -9
    elsewhere = tmp_path / "elsewhere"
    conn = sqlite3.connect(fleet.central, isolation_level=None)
    conn.execute("UPDATE journal SET source = ? WHERE tenant = 'aaron'",
                 (str(elsewhere / "aaron.db"),))  # a path no declared directory maps to
    conn.close()
    plan = fleet.run("--dry-run")
    assert "! invalid aaron" in flat(plan.stdout) and "not resumed" in plan.stdout
    assert fleet.run("apply").returncode == 3
    assert not elsewhere.exists() and fleet.path("aaron", "eu").exists()


def test_a_fleet_restored_from_a_backup_elsewhere_converges_like_a_moved_one(
        prod: tuple[Fleet, dict[str, object]], tmp_path: Path) -> None:
    original, before = prod
    cp_a(original.root, tmp_path / "backup")
    subprocess.run(["rm", "-rf", str(original.root)], check=True)  # the disk is lost
    cp_a(tmp_path / "backup", tmp_path / "restored")
    restored = Fleet(tmp_path / "restored")
    plan = restored.run("--dry-run")
    assert "* fleet moved registry" in flat(plan.stdout), plan.stdout
    assert restored.run("apply").returncode == 0
    for t, r in TENANTS.items():
        assert content(restored, restored.path(t, r)) == before[t]
    assert restored.run("--dry-run").returncode == 0


def test_a_region_directory_moved_by_hand_and_declared_there_is_rerooted(
        fleet: Fleet) -> None:
    before = seed(fleet, {"aaron": "eu", "acme": "us"}, notes=20)
    (fleet.data / "us").rename(fleet.data / "us-ssd")
    edit(fleet, lambda c: c["regions"].update(us={"path": "data/us-ssd"}))
    plan = fleet.run("--dry-run")
    assert f"* reroot us: {fleet.data / 'us'} → {fleet.data / 'us-ssd'} (acme)" \
        in flat(plan.stdout), plan.stdout
    assert "missing" not in plan.stdout and "> relocate" not in plan.stdout
    assert fleet.run("apply").returncode == 0
    assert rows(fleet)["acme"] == ("us", str(fleet.data / "us-ssd" / "acme.db"), "active")
    assert content(fleet, fleet.data / "us-ssd" / "acme.db") == before["acme"]
    assert not (fleet.data / "_retired").exists()  # nothing copied, nothing retired


def test_a_tenant_file_moved_by_hand_to_its_new_region_is_rerooted_not_restored(
        fleet: Fleet) -> None:
    before = seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=20)
    fleet.path("aaron", "us").parent.mkdir(mode=0o700, exist_ok=True)
    fleet.path("aaron", "eu").rename(fleet.path("aaron", "us"))
    fleet.declare({"aaron": {"region": "us"}, "bob": {"region": "eu"}})
    refused = fleet.run("restore", "aaron", "--from", str(fleet.path("aaron", "us")))
    assert refused.returncode == 1 and "run `reconcile`" in refused.stderr
    assert not fleet.path("aaron", "eu").exists()  # no second copy
    plan = fleet.run("--dry-run")
    assert "* reroot eu → us: " in flat(plan.stdout) and "missing" not in plan.stdout
    assert fleet.run("apply").returncode == 0
    assert rows(fleet)["aaron"] == ("us", str(fleet.path("aaron", "us")), "active")
    assert content(fleet, fleet.path("aaron", "us")) == before["aaron"]
    assert fleet.run("--dry-run").returncode == 0


def _as_written_by_an_older_reconciler(f: Fleet) -> None:
    """The registry as a reconciler without the ``fleet`` table left it: the version
    before the step that creates it, without that step's table or any later step's
    (the merge put identity's step after others and drift's and metrics' after it)."""
    at = next(i for i, step in enumerate(registry.UPGRADES) if "CREATE TABLE fleet" in step)
    conn = sqlite3.connect(f.central, isolation_level=None)
    for step in reversed(registry.UPGRADES[at:]):  # undone latest first
        for table, column in re.findall(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", step):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        for table in re.findall(r"CREATE TABLE (\w+)", step):
            conn.execute(f"DROP TABLE {table}")
    conn.execute(f"PRAGMA user_version = {at}")
    conn.close()


def test_a_copy_of_a_fleet_last_run_by_an_older_reconciler_is_rerooted_too(
        fleet: Fleet, tmp_path: Path) -> None:
    before = seed(fleet, {"aaron": "eu", "acme": "us"}, notes=20)
    _as_written_by_an_older_reconciler(fleet)
    assert fleet.run("--dry-run").returncode == 0  # recording the identity is no change
    digests = tree_digests(fleet.root)
    cp_a(fleet.root, tmp_path / "staging")
    staging = Fleet(tmp_path / "staging")
    edit(staging, lambda c: c["tenants"]["acme"].update(region="eu"))

    plan = staging.run("--dry-run")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert f"* reroot us: {fleet.data / 'us'} → {staging.data / 'us'} (acme)" in flat(
        plan.stdout)
    assert "> relocate acme us → eu" in flat(plan.stdout)  # from the copy's own file
    assert staging.run("apply").returncode == 0
    assert content(staging, staging.path("acme", "eu")) == before["acme"]
    assert tree_digests(fleet.root) == digests  # prod's acme.db never moved
    assert fleet.run("apply").returncode == 0  # the original records its identity
    assert fleet.registry("SELECT value FROM fleet WHERE key = 'central'") == [
        (str(fleet.central),)]
    assert fleet.run("--dry-run").returncode == 0


def _mount_bind(source: Path, target: Path) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """A directory, and two mount points it can be mounted at (unmounted afterwards)."""
    disk, a, b = tmp_path / "disk", tmp_path / "mnt-a", tmp_path / "mnt-b"
    disk.mkdir()
    if not _mount_bind(disk, a):
        pytest.skip("bind mounts need root (CAP_SYS_ADMIN); this test remounts a real "
                    "filesystem at another path")
    try:
        yield disk, a, b
    finally:
        for point in (b, a):
            subprocess.run(["umount", str(point)], capture_output=True)


def _fleet_at(root: Path) -> Fleet:
    f = Fleet(root)
    f.root.mkdir(exist_ok=True)
    f.use_shipped_migrations()
    return f


def test_a_fleet_remounted_at_another_path_converges_and_a_second_mount_is_no_copy(
        mounts: tuple[Path, Path, Path]) -> None:
    _disk, a, b = mounts
    first = _fleet_at(a / "fleet")
    before = seed(first, {"aaron": "eu", "acme": "us"}, notes=20)
    assert _mount_bind(a, b)  # the same filesystem seen at a second path as well
    second = Fleet(b / "fleet")
    plan = second.run("--dry-run")
    assert "* fleet moved registry" in flat(plan.stdout), plan.stdout + plan.stderr
    assert "is a copy" not in plan.stderr  # the same file under another name: no copy
    subprocess.run(["umount", str(a)], check=True)  # remounted: only the new path is left
    done = second.run("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {t: p for t, (_r, p, _s) in rows(second).items()} == {
        "aaron": str(second.path("aaron", "eu")), "acme": str(second.path("acme", "us"))}
    assert content(second, second.path("acme", "us")) == before["acme"]
    assert second.run("--dry-run").returncode == 0
