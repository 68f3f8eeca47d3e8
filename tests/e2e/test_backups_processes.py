"""A fleet replicated by several real Litestream processes (``settings.backup.
processes``): each tenant in the process of its shard, a crashed process restarted
alone while the others keep replicating, and archive (release) and relocation
(handover) reaching the process that holds the file."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import litestream
from reconciler.backup import shard_of
from tests.conftest import Fleet
from tests.e2e.backupkit import SYNC, Daemon, titles, wait_for, write
from tests.e2e.processkit import litestream_children, synced

PROCESSES = 3
TENANTS = {f"t{i:02d}": {"region": ("eu", "us")[i % 2]} for i in range(9)}


def _declare(fleet: Fleet, tenants: dict[str, dict[str, str]], replica: str,
             **settings: Any) -> None:
    fleet.declare(tenants, backup={"replica": replica, "sync_interval": SYNC,
                                   "lag_threshold": "2s", "processes": PROCESSES}, **settings)


def _control(fleet: Fleet, shard: int) -> litestream.Control:
    return litestream.Control(litestream.socket_path(fleet.central, shard))


def _held(fleet: Fleet) -> dict[int, set[str]]:
    return {k: set(_control(fleet, k).paths()) for k in range(PROCESSES)}


@pytest.fixture
def sharded(fleet: Fleet, tmp_path: Path) -> Iterator[tuple[Fleet, Daemon]]:
    _declare(fleet, TENANTS, (tmp_path / "backups").as_uri())
    daemon = Daemon(fleet)
    try:
        wait_for(lambda: synced(fleet, PROCESSES) == len(TENANTS), what="every tenant replicated")
        yield fleet, daemon
    finally:
        assert daemon.stop() == 0


def test_each_tenant_is_replicated_by_the_process_of_its_shard_and_only_there(
        sharded: tuple[Fleet, Daemon]) -> None:
    fleet, daemon = sharded
    held = _held(fleet)
    for name, spec in TENANTS.items():
        path = str(fleet.path(name, spec["region"]))
        assert [k for k, paths in held.items() if path in paths] == [shard_of(name, PROCESSES)]
    assert len(litestream_children(daemon)) == PROCESSES
    assert (fleet.central.parent / ".litestream-processes").read_text().strip() == "3"
    data = json.loads(fleet.run("status", "--json").stdout)  # a one-shot command sees all
    assert data["backups"]["replicated"] == len(TENANTS) and data["backups"]["without"] == 0


def test_a_crashed_process_is_restarted_alone_and_its_tenants_catch_up(
        sharded: tuple[Fleet, Daemon]) -> None:
    fleet, daemon = sharded
    before = litestream_children(daemon)
    victim = 1
    name = next(n for n in TENANTS if shard_of(n, PROCESSES) == victim)
    path = fleet.path(name, TENANTS[name]["region"])
    os.kill(before[victim], signal.SIGKILL)
    write(fleet, f"{name}.yoursaas.com", "while-down")  # the tenant keeps serving
    wait_for(lambda: litestream_children(daemon).get(victim) not in (None, before[victim]),
             60, "restart")
    after = litestream_children(daemon)
    assert {k: p for k, p in after.items() if k != victim} == \
        {k: p for k, p in before.items() if k != victim}  # the others never stopped
    wait_for(lambda: synced(fleet, PROCESSES) == len(TENANTS), 60, "all replicated again")
    written = time.time()
    wait_for(lambda: (d := _control(fleet, victim).databases().get(str(path))) is not None
             and d.synced_at is not None and d.synced_at > written, what="caught up")
    copy = fleet.root / "check.db"
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
    wait_for(lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) > at)
    out = fleet.run("restore", name, "--at", at, "--to", str(copy))
    assert out.returncode == 0, out.stderr
    assert titles(copy) == ["while-down"]
    events = (fleet.root / "daemon.log").read_text()
    assert '"process": 1' in events and "litestream exited; restarting" in events


def test_archive_and_relocation_reach_the_process_that_holds_the_file(
        sharded: tuple[Fleet, Daemon], tmp_path: Path) -> None:
    fleet, _daemon = sharded
    replica = (tmp_path / "backups").as_uri()
    # a tenant to relocate eu -> us and one to archive, in different processes
    moving = next(n for n, s in TENANTS.items() if s["region"] == "eu")
    leaving = next(n for n in TENANTS if n != moving and
                   shard_of(n, PROCESSES) != shard_of(moving, PROCESSES))
    write(fleet, f"{moving}.yoursaas.com", "moving")
    tenants = {**TENANTS, moving: {"region": "us"}}
    _declare(fleet, tenants, replica)
    out = fleet.run("apply")
    assert out.returncode in (0, 3), out.stderr
    held, shard = _held(fleet), shard_of(moving, PROCESSES)
    assert str(fleet.path(moving, "us")) in held[shard]
    assert all(str(fleet.path(moving, "eu")) not in p for p in held.values())
    points = json.loads(fleet.run("backups", moving, "--json").stdout)
    assert points[1]["path"] == str(fleet.path(moving, "us")) and points[1]["latest"]
    assert titles(fleet.path(moving, "us")) == ["moving"]

    gone = fleet.path(leaving, TENANTS[leaving]["region"])
    assert str(gone) in held[shard_of(leaving, PROCESSES)]
    del tenants[leaving]
    _declare(fleet, tenants, replica, prune="archive")
    out = fleet.run("apply")
    assert out.returncode in (0, 3), out.stderr
    assert all(str(gone) not in p for p in _held(fleet).values())
    assert not gone.exists() and not Path(f"{gone}-wal").exists()
    assert json.loads(fleet.run("backups", leaving, "--json").stdout)[0]["ended_at"]


def test_a_changed_process_count_moves_every_tenant_to_its_new_process(
        sharded: tuple[Fleet, Daemon], tmp_path: Path) -> None:
    fleet, daemon = sharded
    fleet.declare(TENANTS, backup={"replica": (tmp_path / "backups").as_uri(),
                                   "sync_interval": SYNC, "lag_threshold": "2s",
                                   "processes": 2})

    def moved() -> bool:
        try:
            held = {k: set(_control(fleet, k).paths()) for k in range(2)}
        except Exception:
            return False
        return all(str(fleet.path(n, s["region"])) in held[shard_of(n, 2)]
                   for n, s in TENANTS.items()) and sum(map(len, held.values())) == len(TENANTS)
    wait_for(moved, 60, "every tenant in its process of 2")
    assert (fleet.central.parent / ".litestream-processes").read_text().strip() == "2"
    assert len(litestream_children(daemon)) == 2
    assert not litestream.socket_path(fleet.central, 2).exists()
    lineages = json.loads(fleet.run("backups", "t00", "--json").stdout)
    assert len(lineages) == 1  # the same file keeps its lineage in its new process
