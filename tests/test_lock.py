"""``lock.if_free``: the daemon's chores on the registry outside a pass (an event,
lineages, registrations) take the fleet lock without waiting. Real lock files and
registries in tmp_path; log lines captured with structlog's own ``capture_logs``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog
from structlog.testing import capture_logs

from reconciler import lock
from reconciler.lock import FleetLock
from reconciler.registry import Registry


def test_a_held_lock_skips_the_work_and_says_so(tmp_path: Path) -> None:
    central = tmp_path / "central.db"
    ran: list[Registry] = []
    with FleetLock(central) as holder:  # another reconciler's pass
        holder.acquire(wait=False)
        assert not lock.if_free(central, ran.append, structlog.get_logger(), "failed",
                                create=True)
    assert ran == [] and not central.exists()


def test_a_missing_registry_is_created_only_when_asked(tmp_path: Path) -> None:
    central = tmp_path / "central.db"
    ran: list[int] = []
    assert lock.if_free(central, lambda reg: ran.append(reg.version), structlog.get_logger(),
                        "failed", create=False)
    assert ran == [] and not central.exists()
    assert lock.if_free(central, lambda reg: ran.append(reg.version), structlog.get_logger(),
                        "failed", create=True)
    assert central.exists() and ran and ran[0] > 0  # created and upgraded
    assert lock.if_free(central, lambda reg: ran.append(reg.version), structlog.get_logger(),
                        "failed", create=False)
    assert len(ran) == 2  # it exists now: the work runs


def test_a_failing_work_is_logged_with_its_fields_and_the_lock_released(
        tmp_path: Path) -> None:
    central = tmp_path / "central.db"

    def work(reg: Registry) -> None:
        reg.conn.execute("SELECT * FROM no_such_table")
    with capture_logs() as logs:
        assert lock.if_free(central, work, structlog.get_logger(), "event not recorded",
                            create=True, action="load")
    [entry] = logs
    assert entry["event"] == "event not recorded" and entry["action"] == "load"
    assert entry["log_level"] == "warning" and "no_such_table" in entry["error"]
    with FleetLock(central) as again:  # released: free for the next one
        again.acquire(wait=False)
    conn = sqlite3.connect(central)
    assert conn.execute("PRAGMA user_version").fetchone()[0] > 0
    conn.close()
