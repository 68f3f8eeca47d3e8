"""Region agents and cross-host relocation (issue 15 items 1 and 3), end to end.

Two "hosts": separate project folders, data roots and registries, each with its own
``reconcile daemon --region`` and Litestream, sharing only the replica store."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.backupkit import NatsServer
from tests.e2e.xmovekit import Hosts, Writer, live_copies, settle, titles


def test_each_region_creates_its_tenants_only_on_its_host(hosts: Hosts) -> None:
    hosts.declare({"aaron": "eu", "acme": "us"})
    hosts.start()
    settle(lambda: hosts["eu"].status_of("aaron") == "active"
           and hosts["us"].status_of("acme") == "active", "both created")
    assert hosts["eu"].path("aaron").exists() and hosts["us"].path("acme").exists()
    assert hosts["eu"].status_of("acme") is None and hosts["us"].status_of("aaron") is None
    assert not hosts["eu"].fleet.path("acme", "us").exists()
    assert not hosts["us"].fleet.path("aaron", "eu").exists()
    assert next(e[2] for e in hosts["eu"].events("create")).startswith("eu@")


def test_relocation_eu_to_us_under_a_concurrent_writer_keeps_every_acknowledged_row(
        hosts: Hosts) -> None:
    hosts.declare({"aaron": "eu", "acme": "us"})
    hosts.start()
    eu, us = hosts["eu"], hosts["us"]
    settle(lambda: eu.status_of("aaron") == "active" and us.status_of("acme") == "active",
           "both created")
    writer = Writer(eu, "aaron.yoursaas.com").start()
    settle(lambda: len(writer.acked) >= 20, "rows written on eu")
    hosts.declare({"aaron": "us", "acme": "us"})
    settle(lambda: us.status_of("aaron") == "active", "aaron active on us", timeout=120)
    settle(lambda: eu.status_of("aaron") is None, "eu released aaron")
    acked = writer.stop()
    assert acked and writer.refused > 0
    assert set(acked) <= set(titles(us.path("aaron")))
    assert live_copies(hosts, "aaron") == ["us"]
    assert us.generation("aaron") == 2
    # restored by Litestream, yet private like every file the reconciler makes (the
    # tests run under umask 022)
    for private in (us.path("aaron"), us.fleet.data / "_follow" / "eu.db"):
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600, private
    assert not eu.path("aaron").exists()
    assert list((eu.fleet.data / "_retired").glob("aaron-*.db"))
    assert us.status_of("acme") == "active"  # the rest of the region never stopped


SOURCE_POINTS = ("xmove:after-fence", "xmove:after-sync", "xmove:after-handoff",
                 "xmove:before-retire", "xmove:after-retire")
DEST_POINTS = ("xmove:after-restore", "xmove:after-verify", "xmove:after-register")


def schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return [(str(n), str(s)) for n, s in conn.execute(
            "SELECT name, sql FROM sqlite_schema WHERE name NOT LIKE '_litestream%' "
            "AND sql IS NOT NULL ORDER BY name")]
    finally:
        conn.close()


# two points per side in the default run, every point in the slow run
QUICK = ("xmove:after-sync", "xmove:before-retire", "xmove:after-restore",
         "xmove:after-register")


@pytest.mark.parametrize("point", [p if p in QUICK else pytest.param(p, marks=pytest.mark.slow)
                                   for p in (*SOURCE_POINTS, *DEST_POINTS)])
def test_sigkill_of_either_agent_at_each_phase_ends_with_one_live_copy_and_every_row(
        hosts: Hosts, point: str) -> None:
    side = "eu" if point in SOURCE_POINTS else "us"
    hosts.declare({"aaron": "eu", "acme": "us"})
    eu, us = hosts["eu"], hosts["us"]
    for host in hosts:
        host.start(crash_at=point if host.region == side else None)
    settle(lambda: eu.status_of("aaron") == "active" and us.status_of("acme") == "active",
           "both created")
    writer = Writer(eu, "aaron.yoursaas.com").start()
    settle(lambda: len(writer.acked) >= 20, "rows written on eu")
    hosts.declare({"aaron": "us", "acme": "us"})
    assert hosts[side].wait_dead() == -signal.SIGKILL  # died at the crash point
    hosts[side].kill()  # and its Litestream with it
    hosts[side].start()
    settle(lambda: us.status_of("aaron") == "active" and eu.status_of("aaron") is None,
           "relocated after the crash", timeout=120)
    acked = writer.stop()
    assert set(acked) <= set(titles(us.path("aaron")))
    assert live_copies(hosts, "aaron") == ["us"]
    assert schema(us.path("aaron")) == schema(us.path("acme"))
    assert us.fleet.user_version(us.path("aaron")) == 3
    assert not eu.path("aaron").exists()
    assert us.registry("SELECT count(*) FROM journal") == [(0,)]
    assert eu.registry("SELECT count(*) FROM journal") == [(0,)]
    assert eu.registry("SELECT count(*) FROM handoffs") == [(0,)]


@pytest.fixture
def nats_hosts(tmp_path: Path) -> Iterator[tuple[Hosts, NatsServer]]:
    server = NatsServer(tmp_path / "jetstream")
    h = Hosts(tmp_path, f"{server.url}/tenants")
    try:
        yield h, server
    finally:
        for host in h:
            host.kill()  # a graceful stop waits ~30 s for a final sync to the store
        server.kill()


def test_the_replica_server_stopped_mid_relocation_then_started_again(
        nats_hosts: tuple[Hosts, NatsServer]) -> None:
    hosts, nats = nats_hosts
    hosts.declare({"aaron": "eu", "acme": "us", "hooli": "eu"})
    hosts.start()
    eu, us = hosts["eu"], hosts["us"]
    settle(lambda: eu.status_of("aaron") == "active" and eu.status_of("hooli") == "active"
           and us.status_of("acme") == "active", "all created")
    writer = Writer(eu, "aaron.yoursaas.com").start()
    other = Writer(eu, "hooli.yoursaas.com", prefix="hooli").start()
    settle(lambda: len(writer.acked) >= 20, "rows written on eu")
    hosts.declare({"aaron": "us", "acme": "us", "hooli": "eu"})
    settle(lambda: eu.status_of("aaron") == "relocating", "aaron fenced on eu")
    nats.kill()  # the replica store goes away in the middle of the move
    time.sleep(4)
    assert us.status_of("aaron") is None or eu.status_of("aaron") is None
    assert eu.path("aaron").exists() or us.status_of("aaron") == "active"
    during = len(other.acked)
    settle(lambda: len(other.acked) > during + 10, "hooli served on eu meanwhile")
    back = NatsServer(nats.store, nats.port)
    try:
        settle(lambda: us.status_of("aaron") == "active" and eu.status_of("aaron") is None,
               "relocated once the replica store is back", timeout=150)
    finally:
        back.kill()
    acked = writer.stop()
    other.stop()
    assert set(acked) <= set(titles(us.path("aaron")))
    assert live_copies(hosts, "aaron") == ["us"]
    assert set(other.acked) <= set(titles(eu.path("hooli")))


def test_a_tenant_relocated_back_and_forth_keeps_every_row(
        nats_hosts: tuple[Hosts, NatsServer]) -> None:
    hosts, _nats = nats_hosts
    hosts.declare({"aaron": "eu", "acme": "us"})
    hosts.start()
    settle(lambda: hosts["eu"].status_of("aaron") == "active", "created on eu")
    written: list[str] = []
    for n, (there, other) in enumerate((("us", "eu"), ("eu", "us"), ("us", "eu"))):
        writer = Writer(hosts[other], "aaron.yoursaas.com", prefix=f"leg{n}").start()
        settle(lambda w=writer: len(w.acked) >= 10, f"rows written on {other}")
        hosts.declare({"aaron": there, "acme": "us"})
        settle(lambda t=there, o=other: hosts[t].status_of("aaron") == "active"
               and hosts[o].status_of("aaron") is None, f"aaron moved to {there}",
               timeout=120)
        written += writer.stop()
        assert set(written) <= set(titles(hosts[there].path("aaron")))  # every leg's rows
        assert hosts[there].generation("aaron") == n + 2
        assert live_copies(hosts, "aaron") == [there]


@pytest.mark.slow
def test_randomized_faults_during_repeated_relocations_never_lose_a_row_or_duplicate(
        nats_hosts: tuple[Hosts, NatsServer]) -> None:
    """Twelve moves back and forth, each with a random fault: SIGKILL of the source or
    of the destination agent at a random phase, the replica server down for a while, or
    nothing. After each: every acknowledged row, the schema, exactly one live copy."""
    hosts, nats = nats_hosts
    rng = random.Random(int(os.environ.get("XMOVE_SEED", "15")))
    hosts.declare({"aaron": "eu", "acme": "us"})
    hosts.start()
    settle(lambda: hosts["eu"].status_of("aaron") == "active", "created on eu")
    servers = [nats]  # each restart is a new process on the same store and port
    try:
        _moves(hosts, servers, rng)
    finally:
        for server in servers:
            server.kill()


def _moves(hosts: Hosts, servers: list[NatsServer], rng: random.Random) -> None:
    written: list[str] = []
    here = "eu"
    for n in range(12):
        there = "us" if here == "eu" else "eu"
        fault = rng.choice(("source", "dest", "replica", "none"))
        point = rng.choice(SOURCE_POINTS if fault == "source" else DEST_POINTS)
        victim = hosts[here if fault == "source" else there]
        if fault in ("source", "dest"):
            victim.stop()
            victim.start(crash_at=point)
        writer = Writer(hosts[here], "aaron.yoursaas.com", prefix=f"move{n}").start()
        settle(lambda w=writer: len(w.acked) >= 5, f"rows written on {here}")
        hosts.declare({"aaron": there, "acme": "us"})
        if fault == "replica":
            settle(lambda h=here: hosts[h].status_of("aaron") != "active", "fenced")
            servers[-1].kill()
            time.sleep(rng.uniform(0.5, 4))
            servers.append(NatsServer(servers[-1].store, servers[-1].port))
        elif fault != "none":
            assert victim.wait_dead() == -signal.SIGKILL, (n, fault, point)
            victim.kill()
            victim.start()
        settle(lambda t=there, h=here: hosts[t].status_of("aaron") == "active"
               and hosts[h].status_of("aaron") is None, f"move {n} ({fault} {point})",
               timeout=150)
        written += writer.stop()
        final = hosts[there].path("aaron")
        assert set(written) <= set(titles(final)), (n, fault, point)
        assert schema(final) == schema(hosts["us"].path("acme"))
        assert live_copies(hosts, "aaron") == [there]
        assert not hosts[here].path("aaron").exists()
        here = there
