"""Archive and restore through the real ``reconcile`` (issue 3, DESIGN §5): a removed
tenant leaves service with its data kept, declaring it again brings that data back,
the prune guards hold, and a SIGKILL at any step of either is finished by the next run.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Fleet
from tests.e2e.test_relocate_crash import Rows, content, seed


def _declare(fleet: Fleet, tenants: dict[str, dict[str, Any]], **settings: Any) -> None:
    fleet.declare(tenants, **({"prune": "archive"} | settings))


def _archives(fleet: Fleet, tenant: str) -> list[Path]:
    return sorted((fleet.data / "_archive").glob(f"{tenant}-*.db"))


def _assert_archived(fleet: Fleet, tenant: str, rows: Rows) -> Path:
    [archive] = _archives(fleet, tenant)
    assert fleet.registry(f"SELECT status, path FROM tenants WHERE name = '{tenant}'") == [
        ("archived", str(archive))]
    assert fleet.registry(f"SELECT domain FROM domains WHERE tenant = '{tenant}'") == []
    assert not list(fleet.data.glob(f"[!_]*/{tenant}.db*"))  # no live file in any region
    assert content(fleet, archive) == rows
    return archive


def test_removed_tenant_is_archived_out_of_routing_and_restored_when_declared_again(
        fleet: Fleet) -> None:
    before = seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=50, prune="archive")
    _declare(fleet, {"bob": {"region": "eu"}})
    plan = fleet.run("plan")
    assert plan.returncode == 2 and "archive" in plan.stdout and "aaron" in plan.stdout
    done = fleet.run("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    archive = _assert_archived(fleet, "aaron", before["aaron"])
    assert fleet.run("plan").returncode == 0  # archived is converged, not a problem

    _declare(fleet, {"aaron": {"region": "us", "domains": ["aaron.example.com"]},
                     "bob": {"region": "eu"}})
    plan = fleet.run("plan")
    assert "restore" in plan.stdout and archive.name in plan.stdout
    back = fleet.run("apply")
    assert back.returncode == 0, back.stdout + back.stderr
    assert fleet.registry("SELECT region, status, path FROM tenants WHERE name = 'aaron'") == [
        ("us", "active", str(fleet.path("aaron", "us")))]
    assert content(fleet, fleet.path("aaron", "us")) == before["aaron"]  # never empty
    assert sorted(d for (d,) in fleet.registry(
        "SELECT domain FROM domains WHERE tenant = 'aaron'")) == [
        "aaron.example.com", "aaron.yoursaas.com"]
    assert _archives(fleet, "aaron") == []  # the archive is stale now: retired, not deleted
    assert [content(fleet, p) for p in (fleet.data / "_retired").glob("aaron-archive-*.db")
            ] == [before["aaron"]]
    assert fleet.run("plan").returncode == 0


def test_restore_takes_the_newest_archive(fleet: Fleet) -> None:
    before = seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=5, prune="archive")
    _declare(fleet, {"bob": {"region": "eu"}})
    assert fleet.run("apply").returncode == 0
    [newest] = _archives(fleet, "aaron")
    older = newest.with_name("aaron-20200101T000000000Z.db")
    seed_old = fleet.data / "old.db"
    seed_old.write_bytes(newest.read_bytes())
    conn = sqlite3.connect(seed_old)
    conn.execute("DELETE FROM notes")
    conn.commit()
    conn.close()
    seed_old.rename(older)
    _declare(fleet, {"aaron": {"region": "eu"}, "bob": {"region": "eu"}})
    assert fleet.run("apply").returncode == 0
    assert content(fleet, fleet.path("aaron", "eu")) == before["aaron"]
    assert _archives(fleet, "aaron") == [older]  # left alone


def test_prune_guards_off_by_default_limit_protected_and_empty_tenants(fleet: Fleet) -> None:
    names = {n: "eu" for n in ("a1", "a2", "a3", "keep", "vip")}
    seed(fleet, names, notes=1)
    fleet.declare({"keep": {"region": "eu"}, "vip": {"region": "eu", "protected": True}})
    fleet.run("apply")  # registers vip as protected
    off = fleet.run("apply")  # prune is off unless set
    assert off.returncode == 3 and "prune: false" in off.stdout
    assert _archives(fleet, "a1") == [] and fleet.path("a1", "eu").exists()

    _declare(fleet, {"keep": {"region": "eu"}}, prune_limit=1)  # vip undeclared too
    first = fleet.run("apply")
    assert "prune_limit 1" in first.stdout + first.stderr
    archived = {n for (n,) in fleet.registry("SELECT name FROM tenants "
                                             "WHERE status = 'archived'")}
    assert archived == {"a1"}
    fleet.run("apply")
    fleet.run("apply")
    archived = {n for (n,) in fleet.registry("SELECT name FROM tenants "
                                             "WHERE status = 'archived'")}
    assert archived == {"a1", "a2", "a3"}  # one per pass; vip never
    assert fleet.path("vip", "eu").exists()

    fleet.write_config({"version": 1, "settings": {"prune": "archive"},
                        "regions": {"eu": {}}, "tenants": {}})
    empty = fleet.run("apply")
    assert "declares no tenants" in empty.stdout
    assert fleet.path("keep", "eu").exists() and _archives(fleet, "keep") == []


@pytest.mark.parametrize("point", ["archive:before-move", "archive:during-move",
                                   "archive:after-move"])
def test_sigkill_while_archiving_is_finished_by_the_next_run(fleet: Fleet, point: str) -> None:
    seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=50, prune="archive")
    # rows that live only in the -wal while an application holds the file open: the
    # archive must checkpoint or carry them, or lose them
    app = sqlite3.connect(fleet.path("aaron", "eu"))
    app.execute("PRAGMA wal_autocheckpoint=0")
    app.executemany("INSERT INTO notes (title) VALUES (?)", [("in the wal",)] * 30)
    app.commit()
    assert Path(f"{fleet.path('aaron', 'eu')}-wal").stat().st_size > 0
    before = {"aaron": content(fleet, fleet.path("aaron", "eu"))}
    _declare(fleet, {"bob": {"region": "eu"}})
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL
    app.close()
    again = fleet.run("apply")
    assert again.returncode == 0, again.stdout + again.stderr
    _assert_archived(fleet, "aaron", before["aaron"])
    assert fleet.registry("SELECT * FROM journal") == []


@pytest.mark.parametrize("point", ["restore:during-copy", "restore:after-copy",
                                   "restore:after-link", "restore:after-register",
                                   "restore:during-retire"])
def test_sigkill_while_restoring_is_finished_by_the_next_run(fleet: Fleet, point: str) -> None:
    before = seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=800, prune="archive")
    _declare(fleet, {"bob": {"region": "eu"}})
    assert fleet.run("apply").returncode == 0
    _declare(fleet, {"aaron": {"region": "eu"}, "bob": {"region": "eu"}})
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL
    again = fleet.run("apply")
    assert again.returncode == 0, again.stdout + again.stderr
    assert fleet.run("plan").returncode == 0
    assert fleet.registry("SELECT status, path FROM tenants WHERE name = 'aaron'") == [
        ("active", str(fleet.path("aaron", "eu")))]
    assert content(fleet, fleet.path("aaron", "eu")) == before["aaron"]
    assert _archives(fleet, "aaron") == [] and fleet.registry("SELECT * FROM journal") == []
    assert [p.name for p in (fleet.data / "eu").iterdir() if p.name.startswith(".")] == []


def test_restore_refuses_to_overwrite_a_file_already_at_the_tenant_path(fleet: Fleet) -> None:
    seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=5, prune="archive")
    _declare(fleet, {"bob": {"region": "eu"}})
    assert fleet.run("apply").returncode == 0
    stranger = fleet.path("aaron", "eu")
    stranger.write_bytes(fleet.path("bob", "eu").read_bytes())
    digest = fleet.digests()
    _declare(fleet, {"aaron": {"region": "eu"}, "bob": {"region": "eu"}})
    done = fleet.run("apply")
    assert done.returncode == 3 and "already exists" in done.stdout
    assert {k: v for k, v in fleet.digests().items() if not k.startswith("central")} == {
        k: v for k, v in digest.items() if not k.startswith("central")}


def test_restore_killed_then_undeclared_again_is_finished_then_archived_again(
        fleet: Fleet) -> None:
    before = seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=20, prune="archive")
    _declare(fleet, {"bob": {"region": "eu"}})
    assert fleet.run("apply").returncode == 0
    _declare(fleet, {"aaron": {"region": "eu"}, "bob": {"region": "eu"}})
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": "restore:after-link"})
    assert killed.returncode == -signal.SIGKILL
    _declare(fleet, {"bob": {"region": "eu"}})  # changed their mind again
    finish = fleet.run("apply")  # finishes the restore: never leaves it half done
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert fleet.registry("SELECT * FROM journal") == []
    again = fleet.run("apply")  # and archives the now-undeclared tenant once more
    assert again.returncode == 0, again.stdout + again.stderr
    _assert_archived(fleet, "aaron", before["aaron"])


def test_archive_killed_then_declared_again_is_restored_in_the_same_run(fleet: Fleet) -> None:
    before = seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=20, prune="archive")
    _declare(fleet, {"bob": {"region": "eu"}})
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": "archive:during-move"})
    assert killed.returncode == -signal.SIGKILL
    _declare(fleet, {"aaron": {"region": "us"}, "bob": {"region": "eu"}})
    again = fleet.run("apply")
    assert again.returncode == 0, again.stdout + again.stderr
    assert fleet.run("plan").returncode == 0
    assert fleet.registry("SELECT region, status FROM tenants WHERE name = 'aaron'") == [
        ("us", "active")]
    assert content(fleet, fleet.path("aaron", "us")) == before["aaron"]
    assert not fleet.path("aaron", "eu").exists() and _archives(fleet, "aaron") == []
