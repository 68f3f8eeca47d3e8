"""Backups to a network replica: a real NATS server (JetStream object store) on
127.0.0.1 — the replica is not only a folder. Then the replica becomes unreachable:
the fleet keeps serving, the lag grows and is reported, and replication catches up
when the server is back (issue 14)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Fleet
from tests.e2e.backupkit import Daemon, NatsServer, declare, status, titles, wait_for, write
from tests.e2e.test_backups import _iso


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    try:
        yield server
    finally:
        server.kill()


def test_nats_replica_unreachable_fleet_serves_lag_reported_then_caught_up(
        fleet: Fleet, nats: NatsServer, tmp_path: Path) -> None:
    declare(fleet, {"aaron": {"region": "eu"}, "acme": {"region": "us"}},
            f"{nats.url}/tenants")
    live = fleet.path("aaron", "eu")
    daemon = Daemon(fleet)
    try:
        daemon.replicated(2)  # its buckets were created by the reconciler (nats-py)
        write(fleet, "aaron.yoursaas.com", "replicated")
        daemon.caught_up(live, time.time())
        point = fleet.run("backups", "aaron")
        assert point.returncode == 0 and f"{nats.url}/tenants-aaron-" in point.stdout

        nats.kill()  # the replica is unreachable
        went_down = time.time()
        write(fleet, "aaron.yoursaas.com", "while-unreachable")  # the fleet keeps serving
        assert titles(live) == ["replicated", "while-unreachable"]

        def lagging() -> dict[str, object] | None:
            data = status(fleet)
            rows = {r["tenant"]: r for r in data["tenants"]}
            lag = rows["aaron"]["backup_lag"]
            return data if lag is not None and lag > 2 else None
        data = wait_for(lagging, what="aaron's lag above the threshold")
        assert data["backups"]["lagging"] >= 1
        plan = fleet.run("plan")
        assert "no-backup" in plan.stdout and "aaron" in plan.stdout, plan.stdout
        idle = {r["tenant"]: r for r in status(fleet)["tenants"]}["acme"]
        assert idle["backup_lag"] is not None  # nothing to send: an idle tenant is current

        back = NatsServer(nats.store, nats.port)  # the same server comes back
        try:
            daemon.caught_up(live, max(time.time(), went_down))
            at = _iso(time.time() + 1)
            wait_for(lambda: _iso(time.time()) > at, what="the next second")
            copy = fleet.root / "aaron-from-nats.db"
            out = fleet.run("restore", "aaron", "--at", at, "--to", str(copy))
            assert out.returncode == 0, out.stderr
            assert titles(copy) == ["replicated", "while-unreachable"]
        finally:
            back.kill()
    finally:
        daemon.stop()
