"""Issue 15 items 2 and 4 across real hosts: each "host" is its own clone with its own
data root and agent (``reconcile daemon --git-pull --region R``), sharing nothing but the
git remote and the replica store (see ``hostkit``)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.routing import CannotTell, Router, TenantElsewhere, TenantNotFound
from tests.conftest import Fleet
from tests.e2e.backupkit import NatsServer
from tests.e2e.hostkit import Host, Hosts, git, read, wait_for
from tests.e2e.test_notes_app import NotesServer

REGIONS = {"eu": {"endpoint": "https://eu.example.com"},
           "us": {"endpoint": "https://us.example.com"}}


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    """Two hosts sharing a file:// replica store (fast)."""
    kit = Hosts(tmp_path, replica=(tmp_path / "replica").as_uri(), regions=REGIONS)
    yield kit
    kit.stop_all()


@pytest.fixture
def nats_hosts(tmp_path: Path) -> Iterator[tuple[Hosts, NatsServer]]:
    """Two hosts sharing a real NATS JetStream server on 127.0.0.1."""
    nats = NatsServer(tmp_path / "nats")
    kit = Hosts(tmp_path, replica=f"{nats.url}/fleet", regions=REGIONS)
    yield kit, nats
    kit.stop_all()
    nats.kill()


def test_two_agents_converge_on_one_revision_each_writing_only_its_region(
        hosts: Hosts) -> None:
    eu, us = hosts.host("eu"), hosts.host("us")
    eu.start()
    us.start()
    sha = hosts.push({"aaron": {"region": "eu"}, "acme": {"region": "us"}}, "two tenants")
    wait_for(lambda: eu.registry("SELECT name FROM tenants") == [("aaron",)], what="eu")
    wait_for(lambda: us.registry("SELECT name FROM tenants") == [("acme",)], what="us")
    for h in (eu, us):
        assert git(h.root, "rev-parse", "HEAD") == sha
    assert eu.path("aaron").exists() and not (eu.data / "us" / "acme.db").exists()
    assert us.path("acme").exists() and not (us.data / "eu" / "aaron.db").exists()


def test_each_host_follows_the_others_registry_and_a_killed_follower_is_restarted(
        nats_hosts: tuple[Hosts, NatsServer]) -> None:
    hosts, _nats = nats_hosts
    eu, us = hosts.host("eu"), hosts.host("us")
    hosts.push({"aaron": {"region": "eu"}, "acme": {"region": "us"}})
    eu.start()
    us.start()
    wait_for(lambda: eu.followed("us", "SELECT name, generation FROM tenants")
             == [("acme", 1)], what="eu's copy of us's registry")
    wait_for(lambda: us.followed("eu", "SELECT name FROM tenants") == [("aaron",)],
             what="us's copy of eu's registry")
    # each registry names its agent and the regions; the copy carries the heartbeat
    [(region, host, beat)] = us.followed("eu", "SELECT region, host, heartbeat_at FROM agent")
    assert region == "eu" and host and time.time() - beat < 5
    assert eu.registry("SELECT name, local, registry FROM regions ORDER BY name") == [
        ("eu", 1, None), ("us", 0, str(eu.follow_copy("us")))]
    assert eu.registry("SELECT DISTINCT agent FROM events WHERE agent IS NOT NULL") == [
        (f"eu@{socket.gethostname()}",)]

    # the copy keeps up: a tenant created on us shows up in eu's copy
    hosts.push({"aaron": {"region": "eu"}, "acme": {"region": "us"},
                "globex": {"region": "us"}}, "globex")
    wait_for(lambda: ("globex",) in eu.followed("us", "SELECT name FROM tenants"),
             what="globex in eu's copy")

    # the follower dies: the agent starts another, and the copy keeps up again
    first = wait_for(lambda: eu.follower("us"), what="eu's follower of us")
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: eu.follower("us") not in (None, first), what="a new follower")
    hosts.push({"aaron": {"region": "eu"}, "acme": {"region": "us"},
                "globex": {"region": "us"}, "initech": {"region": "us"}}, "initech")
    wait_for(lambda: ("initech",) in eu.followed("us", "SELECT name FROM tenants"),
             what="initech in eu's copy after the restart")
    assert "registry follower exited; restarting" in eu.log() or \
        "registry copy cannot be resumed" in eu.log()
    # whatever could not be resumed was retired, never deleted, and the view is fresh
    for retired in (eu.data / "_retired").glob("_follow_us-*.db"):
        assert read(retired, "SELECT count(*) FROM tenants")[0][0] >= 2
    beat = eu.followed("us", "SELECT heartbeat_at FROM agent")[0][0]
    assert time.time() - beat < 5


def test_a_copy_that_cannot_be_resumed_is_retired_and_restored_anew(hosts: Hosts) -> None:
    eu, us = hosts.host("eu"), hosts.host("us")
    hosts.push({"aaron": {"region": "eu"}, "acme": {"region": "us"}})
    us.start()
    eu.start()
    wait_for(lambda: eu.followed("us", "SELECT name FROM tenants") == [("acme",)],
             what="eu's copy of us's registry")
    eu.stop()
    before = eu.followed("us", "SELECT name FROM tenants")
    # Litestream's follow position, saved beside the copy, now lies beyond the replica
    Path(f"{eu.follow_copy('us')}-txid").write_text("00000000ffffffff\n")
    eu.start()
    wait_for(lambda: "registry copy cannot be resumed" in eu.log(), what="the retirement")
    [retired] = (eu.data / "_retired").glob("_follow_us-*.db")
    assert read(retired, "SELECT name FROM tenants") == before  # kept, not deleted
    assert Path(f"{retired}-txid").exists()
    wait_for(lambda: eu.followed("us", "SELECT name FROM tenants") == [("acme",)],
             what="the copy restored anew")
    beat = wait_for(lambda: eu.followed("us", "SELECT heartbeat_at FROM agent"))[0][0]
    assert time.time() - beat < 5


def redirect(port: int, host: str, path: str = "/notes") -> tuple[int, str | None, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.getheader("Location"), json.loads(response.read())
    finally:
        conn.close()


def test_routing_status_and_the_app_see_the_whole_fleet_and_a_lagging_view_is_said(
        nats_hosts: tuple[Hosts, NatsServer], tmp_path: Path) -> None:
    hosts, nats = nats_hosts
    eu, us = hosts.host("eu"), hosts.host("us")
    hosts.push({"aaron": {"region": "eu"}, "acme": {"region": "us"}})
    eu.start()
    us.start()
    wait_for(lambda: eu.followed("us", "SELECT name FROM tenants") == [("acme",)],
             what="eu's copy of us's registry")
    wait_for(lambda: eu.registry("SELECT count(*) FROM regions") == [(2,)], what="regions")
    wait_for(lambda: eu.registry("SELECT status FROM tenants WHERE name = 'aaron'")
             == [("active",)], what="aaron created on eu (once its view of us is fresh)")

    router = Router(eu.central, stale_after=5.0)
    with router.connect("aaron.yoursaas.com") as db:  # local: served here
        assert db.tenant.region == "eu"
    with pytest.raises(TenantElsewhere) as info:
        router.connect("acme.yoursaas.com")
    assert (info.value.region, info.value.endpoint) == ("us", "https://us.example.com")
    assert info.value.age is not None and info.value.age < 5

    route = eu.run("route", "acme.yoursaas.com")
    assert route.returncode == 0, route.stderr
    assert "region   us (another host)" in route.stdout
    assert "endpoint https://us.example.com" in route.stdout
    as_json = json.loads(eu.run("route", "acme.yoursaas.com", "--json").stdout)
    assert (as_json["region"], as_json["here"]) == ("us", False)
    regions = {r["name"]: r for r in json.loads(eu.run("status", "--json").stdout)["regions"]}
    assert regions["eu"]["here"] and regions["eu"]["agent"] == f"eu@{socket.gethostname()}"
    assert not regions["us"]["here"] and not regions["us"]["stale"]
    assert regions["us"]["agent"] == f"us@{socket.gethostname()}"
    assert regions["us"]["tenants"] == 1 and regions["us"]["age"] < 5
    text = eu.run("status").stdout
    assert "regions:" in text and "agent us@" in text

    app = NotesServer(Fleet(eu.root), tmp_path, "--stale-after", "5")
    try:
        status, location, body = redirect(app.port, "acme.yoursaas.com")
        assert (status, location) == (307, "https://us.example.com/notes"), body
        assert app.titles("aaron.yoursaas.com") == []

        # the replica store stops: eu's view of us freezes and grows stale
        nats.kill()
        wait_for(lambda: _stale(eu, "us"), timeout=60, what="eu's view of us stale")
        with pytest.raises(CannotTell) as cannot:
            router.resolve("initech.yoursaas.com")
        assert cannot.value.views["us"] is not None and cannot.value.views["us"] > 5
        assert "region us's registry view is" in str(cannot.value)
        with pytest.raises(TenantElsewhere) as moved:  # still said, with the view's age
            router.connect("acme.yoursaas.com")
        assert moved.value.age is not None and moved.value.age > 5
        status, _, body = redirect(app.port, "initech.yoursaas.com")
        assert status == 503 and "cannot tell" in body["error"]
        assert not [p for p in app.opened() if "acme" in p or "host-us" in p], \
            "no file of another region is ever opened here"
        stale = json.loads(eu.run("status", "--json").stdout)["regions"]
        assert [r["stale"] for r in stale if r["name"] == "us"] == [True]
        assert "STALE" in eu.run("status").stdout

        # the store is back: the view catches up and "not found" can be said again
        nats.proc = NatsServer(nats.store, nats.port).proc  # the fixture stops it
        wait_for(lambda: not _stale(eu, "us"), timeout=60, what="eu's view of us fresh")
        with pytest.raises(TenantNotFound):
            router.resolve("initech.yoursaas.com")
    finally:
        app.stop()
        router.close()


def _stale(host: Host, region: str) -> bool:
    beat = host.followed(region, "SELECT heartbeat_at FROM agent")
    return not beat or time.time() - beat[0][0] > 5.5
