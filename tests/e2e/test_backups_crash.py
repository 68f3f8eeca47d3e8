"""A point-in-time restore SIGKILLed at every phase converges on the next run, with no
row lost: the replaced file is always retired whole, never deleted (issue 14)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import Fleet
from tests.e2e.backupkit import Daemon, declare, titles, wait_for, write
from tests.e2e.test_backups import _iso

# before the journal: the next `restore --at` starts over (a staged leftover is retired)
BEFORE_JOURNAL = ("pitr:after-restore", "pitr:after-stage")
# after it: the next `reconcile` finishes the restore from the journal
AFTER_JOURNAL = ("pitr:after-journal", "pitr:during-retire", "pitr:after-retire",
                 "restore:after-copy", "restore:after-link", "restore:after-register",
                 "restore:during-retire")


def _retired_with(fleet: Fleet, title: str) -> list[Path]:
    return [p for p in (fleet.data / "_retired").glob("aaron-*.db") if title in titles(p)]


# the default suite kills one phase of each kind; the slow run kills every phase
SHORT = ("pitr:after-stage", "pitr:during-retire", "restore:after-link")


def test_restore_killed_at_a_phase_of_each_kind_converges(fleet: Fleet, tmp_path: Path
                                                          ) -> None:
    _kill_and_converge(fleet, tmp_path, SHORT)


@pytest.mark.slow
def test_restore_killed_at_every_phase_converges_without_losing_a_row(
        fleet: Fleet, tmp_path: Path) -> None:
    _kill_and_converge(fleet, tmp_path, (*BEFORE_JOURNAL, *AFTER_JOURNAL))


def _kill_and_converge(fleet: Fleet, tmp_path: Path, phases: tuple[str, ...]) -> None:
    declare(fleet, {"aaron": {"region": "eu"}, "acme": {"region": "us"}},
            (tmp_path / "backups").as_uri())
    live = fleet.path("aaron", "eu")
    daemon = Daemon(fleet)
    try:
        daemon.replicated(2)
        write(fleet, "aaron.yoursaas.com", "kept")
        daemon.caught_up(live, time.time())
        at = int(time.time()) + 1
        wait_for(lambda: time.time() > at + 1.05)
        write(fleet, "aaron.yoursaas.com", "undone")
        daemon.caught_up(live, time.time())
    finally:
        daemon.stop()  # restores read the replica; Litestream need not run
    when = _iso(at)
    acme_before = titles(fleet.path("acme", "us"))

    for phase in phases:
        marker = f"extra-{phase}"
        write(fleet, "aaron.yoursaas.com", marker)  # only the replaced file holds this
        crashed = fleet.run("restore", "aaron", "--at", when,
                            env={"RECONCILE_CRASH_AT": phase})
        assert crashed.returncode == -9, (phase, crashed.stderr)
        if phase in BEFORE_JOURNAL:
            assert fleet.registry("SELECT count(*) FROM journal") == [(0,)], phase
            assert marker in titles(live), phase  # nothing was switched
            again = fleet.run("restore", "aaron", "--at", when)
            assert again.returncode == 0, (phase, again.stderr)
        else:
            converge = fleet.run("apply")
            assert converge.returncode in (0, 3), (phase, converge.stderr)  # 3: no backup
            # (the daemon is stopped, so every tenant is reported without a backup)
        assert fleet.registry("SELECT count(*) FROM journal") == [(0,)], phase
        assert fleet.registry("SELECT status FROM tenants WHERE name = 'aaron'") == \
            [("active",)], phase
        assert titles(live) == ["kept"], phase
        assert len(_retired_with(fleet, marker)) == 1, phase  # retired whole, once
        assert not list((fleet.data / "eu").glob(".aaron.db.restoring*")), phase
        assert not list((fleet.data / "_restore").glob("aaron-*")), phase
    assert titles(fleet.path("acme", "us")) == acme_before  # never touched
    # nothing of the replica was lost either: the newest state is still restorable
    newest = fleet.root / "newest.db"
    out = fleet.run("restore", "aaron", "--at", _iso(time.time() + 5), "--to", str(newest))
    assert out.returncode == 0, out.stderr
    assert titles(newest) == ["kept", "undone"]
