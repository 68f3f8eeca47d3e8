"""The stop-now flag (the daemon's second signal) on real SQLite files: a migration ends
after its committed step, a rollout worker does not start, and relocation / restore end
at a journaled phase boundary that the next pass resumes from (issue 4, "Signals")."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler import engine, log, rollout, tenantdb
from tests.conftest import Fleet
from tests.e2e.test_relocate_crash import assert_converged, seed
from tests.test_rollout import content, migrate_action, real_catalog, tenant


def after_calls(n: int) -> Callable[[], bool]:
    """A stop-now flag that becomes set on its ``n``-th reading (as a signal arriving
    while the ``n``-th step runs would be seen at that step's end)."""
    calls = [0]

    def flag() -> bool:
        calls[0] += 1
        return calls[0] >= n

    return flag


def columns(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[1] for r in conn.execute("PRAGMA table_info(users)")]
    finally:
        conn.close()


# --------------------------------------------------------------------------- migrations


def test_migrate_conn_ends_after_the_committed_step_during_which_stop_now_was_set(
        tmp_path: Path) -> None:
    cat = real_catalog(tmp_path, "ALTER TABLE users ADD COLUMN third TEXT;\n")
    path = tenant(tmp_path, ["a@x"])
    conn = tenantdb.connect(path, 1.0)
    try:
        result = tenantdb.migrate_conn(conn, cat, 3, after_calls(1))
        assert not conn.in_transaction
    finally:
        conn.close()
    assert result == tenantdb.MigrateResult(1, 2, (2,), None, stopped=True)
    assert columns(path) == ["id", "email", "name"]  # step 2 committed, step 3 never began
    again = tenantdb.migrate_file(path, cat, 3, 1.0)
    assert (again.from_version, again.to_version, again.applied) == (2, 3, (3,))
    assert columns(path) == ["id", "email", "name", "third"]


def test_stop_now_set_during_the_last_step_is_a_finished_migration_not_a_stop(
        tmp_path: Path) -> None:
    cat = real_catalog(tmp_path, "ALTER TABLE users ADD COLUMN third TEXT;\n")
    path = tenant(tmp_path, ["a@x"], version=2)
    result = tenantdb.migrate_file(path, cat, 3, 1.0, lambda: True)
    assert result == tenantdb.MigrateResult(2, 3, (3,), None, stopped=False)


def test_create_stopped_early_leaves_no_file_at_all(tmp_path: Path) -> None:
    cat = real_catalog(tmp_path, "ALTER TABLE users ADD COLUMN third TEXT;\n")
    path = tmp_path / "eu" / "new.db"
    result = tenantdb.create(path, cat, 3, 1.0, after_calls(1))
    assert result.stopped and result.to_version == 1
    assert list(path.parent.iterdir()) == []  # neither the file nor its temp


def test_rollout_worker_stops_after_its_step_and_one_not_yet_started_is_untouched(
        tmp_path: Path) -> None:
    cat = real_catalog(tmp_path, "ALTER TABLE users ADD COLUMN third TEXT;\n")
    path = tenant(tmp_path, ["a@x"])
    before = content(path)
    untouched = rollout.migrate_one(migrate_action(path), cat, 1.0, take=False,
                                    stop_now=lambda: True)
    assert untouched.not_started and untouched.result is None and untouched.stopped
    assert content(path) == before
    done = rollout.migrate_one(migrate_action(path), cat, 1.0, take=False,
                               stop_now=after_calls(2))  # 1st: before start; 2nd: after v2
    assert done.result is not None and done.stopped and done.result.error is None
    assert (done.result.to_version, done.result.applied) == (2, (2,))


# --------------------------------------------------------------------------- phases


def journal_phase(fleet: Fleet) -> str | None:
    rows = fleet.registry("SELECT phase FROM journal")
    return str(rows[0][0]) if rows else None


@pytest.mark.parametrize("phase", ["verify", "rename", "retire"])
def test_relocation_stopped_at_a_journaled_phase_is_resumed_by_the_next_pass(
        fleet: Fleet, phase: str) -> None:
    before = seed(fleet, {"aaron": "eu"}, notes=50)
    fleet.declare({"aaron": {"region": "us"}})
    inputs = engine.load(fleet.config)
    quiet = log.configure("json", "error")
    first = engine.run_pass(inputs, quiet, stop_now=lambda: journal_phase(fleet) == phase)
    [outcome] = [o for o in first.outcomes if o.action == "relocate"]
    assert outcome.outcome == "pending" and first.stopped
    assert fleet.registry("SELECT action, phase FROM journal") == [("relocate", phase)]
    region, status = fleet.registry("SELECT region, status FROM tenants")[0]
    # before the switch the source is the tenant's file; from `retire` on, the copy is
    assert (region, status) == (("us", "active") if phase == "retire" else ("eu", "relocating"))
    events = fleet.registry("SELECT outcome FROM events WHERE action = 'relocate'")
    assert events == [("pending",)]
    second = engine.run_pass(inputs, quiet)
    assert second.ok, second.outcomes
    assert_converged(fleet, {"aaron": "us"}, before)


@pytest.mark.parametrize("phase", ["link", "retire"])
def test_restore_stopped_at_a_journaled_phase_is_resumed_by_the_next_pass(
        fleet: Fleet, phase: str) -> None:
    before = seed(fleet, {"aaron": "eu", "bea": "eu"}, notes=20, prune="archive")
    fleet.declare({"bea": {"region": "eu"}}, prune="archive")
    quiet = log.configure("json", "error")
    assert engine.run_pass(engine.load(fleet.config), quiet).ok
    assert fleet.registry("SELECT status FROM tenants WHERE name = 'aaron'") == [("archived",)]
    fleet.declare({"aaron": {"region": "eu"}, "bea": {"region": "eu"}}, prune="archive")
    inputs = engine.load(fleet.config)
    first = engine.run_pass(inputs, quiet, stop_now=lambda: journal_phase(fleet) == phase)
    [outcome] = [o for o in first.outcomes if o.action == "restore"]
    assert outcome.outcome == "pending"
    assert fleet.registry("SELECT action, phase FROM journal") == [("restore", phase)]
    second = engine.run_pass(inputs, quiet)
    assert second.ok, second.outcomes
    assert_converged(fleet, {"aaron": "eu", "bea": "eu"}, before)
