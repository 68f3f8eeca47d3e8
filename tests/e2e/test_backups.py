"""Per-tenant backups with real Litestream (issue 14): a fleet replicated by the
daemon's Litestream, applications writing through the routing library, point-in-time
restores proven row by row, Litestream killed and restarted, and restores SIGKILLed at
every phase."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import Fleet
from tests.e2e.backupkit import Daemon, declare, status, titles, wait_for, write

TENANTS = {"aaron": {"region": "eu"}, "acme": {"region": "us"}, "hooli": {"region": "eu"}}


@pytest.fixture
def replicated(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Fleet, Daemon]]:
    declare(fleet, TENANTS, (tmp_path / "backups").as_uri())
    daemon = Daemon(fleet)
    try:
        daemon.replicated(len(TENANTS))
        yield fleet, daemon
    finally:
        daemon.stop()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _moment_between(daemon: Daemon, fleet: Fleet, path: Path) -> tuple[str, float]:
    """A whole UTC second after everything written so far was replicated, and before
    anything written next (Litestream stamps what it captured in whole seconds)."""
    daemon.caught_up(path, time.time())
    at = int(time.time()) + 1
    wait_for(lambda: time.time() > at + 1.05, what="the next second")
    return _iso(at), at


def test_daemon_replicates_every_tenant_and_status_reports_position_and_lag(
        replicated: tuple[Fleet, Daemon], tmp_path: Path) -> None:
    fleet, daemon = replicated
    write(fleet, "aaron.yoursaas.com", "first")
    daemon.caught_up(fleet.path("aaron", "eu"), time.time())
    data = status(fleet)
    assert data["backups"]["replicated"] == 3 and data["backups"]["without"] == 0
    rows = {r["tenant"]: r for r in data["tenants"]}
    assert all(r["backup_lag"] is not None and r["backup_lag"] < 2 for r in rows.values())
    assert rows["aaron"]["backup_txid"] >= 2  # the snapshot, then our transaction
    text = fleet.run("status").stdout
    assert "backups: 3 replicated, 0 lagging more than 2s, 0 without a backup" in text
    # each tenant's file has a replica of its own, under <replica>/<tenant>/<lineage>
    for name in TENANTS:
        lineages = list((tmp_path / "backups" / name).iterdir())
        assert len(lineages) == 1 and any(lineages[0].rglob("*.ltx"))
    listing = fleet.run("backups", "aaron", "--json")
    assert listing.returncode == 0, listing.stderr
    [point] = json.loads(listing.stdout)
    assert point["ended_at"] is None and point["earliest"] <= point["latest"]
    assert point["path"] == str(fleet.path("aaron", "eu"))


def test_restore_at_a_moment_between_two_writes_brings_back_exactly_the_earlier_rows(
        replicated: tuple[Fleet, Daemon]) -> None:
    fleet, daemon = replicated
    live = fleet.path("aaron", "eu")
    for i in range(3):
        write(fleet, "aaron.yoursaas.com", f"before-{i}")
    at, _ = _moment_between(daemon, fleet, live)
    for i in range(2):
        write(fleet, "aaron.yoursaas.com", f"after-{i}")
    daemon.caught_up(live, time.time())
    before = ["before-0", "before-1", "before-2"]
    everything = [*before, "after-0", "after-1"]

    # --to and --dry-run leave the live tenant as it is
    copy = fleet.root / "inspect.db"
    out = fleet.run("restore", "aaron", "--at", at, "--to", str(copy))
    assert out.returncode == 0, out.stderr
    assert titles(copy) == before and titles(live) == everything
    out = fleet.run("restore", "aaron", "--at", at, "--dry-run")
    assert out.returncode == 0 and "dry run: nothing changed" in out.stdout, out.stderr
    assert titles(live) == everything

    out = fleet.run("restore", "aaron", "--at", at)
    assert out.returncode == 0, out.stderr
    assert titles(live) == before  # applications see it on their next request
    write(fleet, "aaron.yoursaas.com", "after-restore")
    assert titles(live) == [*before, "after-restore"]
    retired = [p for p in (fleet.data / "_retired").glob("aaron-eu-*.db")]
    assert len(retired) == 1 and titles(retired[0]) == everything  # retired, not deleted
    assert fleet.registry("SELECT status FROM tenants WHERE name='aaron'") == [("active",)]
    assert fleet.registry("SELECT count(*) FROM journal") == [(0,)]
    # the restored file is a new lineage, replicated at once; the old one stays listed
    daemon.caught_up(live, time.time())
    points = json.loads(fleet.run("backups", "aaron", "--json").stdout)
    assert len(points) == 2 and points[0]["ended_at"] and points[1]["ended_at"] is None
    # the other tenants were not touched
    assert titles(fleet.path("hooli", "eu")) == []


def test_killed_litestream_is_restarted_and_catches_up(
        replicated: tuple[Fleet, Daemon]) -> None:
    fleet, daemon = replicated
    live = fleet.path("acme", "us")
    first = daemon.litestream_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    write(fleet, "acme.yoursaas.com", "while-down")  # the fleet keeps serving
    second = wait_for(lambda: (p := daemon.litestream_pid()) not in (None, first) and p,
                      what="litestream restarted")
    assert second != first
    daemon.replicated(len(TENANTS))
    write(fleet, "acme.yoursaas.com", "after-restart")
    daemon.caught_up(live, time.time())
    copy = fleet.root / "acme-latest.db"
    now = _iso(time.time() + 1)
    wait_for(lambda: time.time() > datetime.fromisoformat(now).timestamp() + 0.1)
    out = fleet.run("restore", "acme", "--at", now, "--to", str(copy))
    assert out.returncode == 0, out.stderr
    assert titles(copy) == ["while-down", "after-restart"]
    events = fleet.registry("SELECT action, outcome FROM events WHERE action = 'backup'")
    assert ("backup", "litestream-exit") in events  # reported, not only logged

    # a daemon restart carries on with the same lineages (its config comes from them)
    assert daemon.stop() == 0
    again = Daemon(fleet)
    try:
        again.replicated(len(TENANTS))
        write(fleet, "acme.yoursaas.com", "after-daemon-restart")
        again.caught_up(live, time.time())
        points = json.loads(fleet.run("backups", "acme", "--json").stdout)
        assert len(points) == 1 and points[0]["txid"] >= 3
    finally:
        again.stop()


def test_files_leaving_service_are_handed_over_relocation_first_archive_keeps_the_replica(
        replicated: tuple[Fleet, Daemon], tmp_path: Path) -> None:
    fleet, daemon = replicated
    replica = (tmp_path / "backups").as_uri()
    write(fleet, "aaron.yoursaas.com", "moving")
    write(fleet, "hooli.yoursaas.com", "keep-me")
    daemon.caught_up(fleet.path("hooli", "eu"), time.time())

    # relocation: the new file is registered and synced before the old one is retired
    declare(fleet, {**TENANTS, "aaron": {"region": "us"}}, replica)
    out = fleet.run("apply")
    assert out.returncode in (0, 3), out.stderr
    new = fleet.path("aaron", "us")
    dbs = daemon.control.databases()
    assert str(new) in dbs and str(fleet.path("aaron", "eu")) not in dbs
    points = json.loads(fleet.run("backups", "aaron", "--json").stdout)
    assert [p["path"] for p in points] == [str(fleet.path("aaron", "eu")), str(new)]
    assert points[1]["latest"] is not None  # synced before the source was retired
    assert titles(new) == ["moving"]

    # archive: Litestream lets go first; the replica stays for its retention
    declare(fleet, {"aaron": {"region": "us"}, "acme": {"region": "us"}}, replica,
            prune="archive")
    out = fleet.run("apply")
    assert out.returncode in (0, 3), out.stderr
    assert str(fleet.path("hooli", "eu")) not in daemon.control.databases()
    assert not fleet.path("hooli", "eu").exists()
    assert not (fleet.data / "eu" / "hooli.db-wal").exists()  # nothing recreated it
    assert any((tmp_path / "backups" / "hooli").rglob("*.ltx"))
    assert json.loads(fleet.run("backups", "hooli", "--json").stdout)[0]["ended_at"]
