"""Routing across regions (issue 15 item 4): this host's registry first, then the
followed copies of the other regions' registries — real registry files written by
``Registry`` in tmp_path, read by the real ``Router``. Highest generation wins, a
missing or stale view is "cannot tell" (never "not found"), and a tenant held elsewhere
is never opened here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.registry import Registry
from reconciler.routing import (
    CannotTell,
    Router,
    TenantElsewhere,
    TenantNotFound,
    TenantUnavailable,
)
from reconciler.state import RegionRow
from tests.conftest import make_db

ENDPOINTS = {"eu": "https://eu.example.com", "us": "https://us.example.com",
             "ap": "https://ap.example.com"}


class Fleetlet:
    """This host (region eu) and the copies it follows of us's and ap's registries."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.central = root / "data" / "central.db"
        self.local = Registry.open(self.central)
        with self.local.transaction():
            self.local.set_agent("eu", "host-eu", "r1", time.time())
            self.local.set_regions([
                RegionRow(r, ENDPOINTS[r], r == "eu",
                          None if r == "eu" else str(self.copy(r)))
                for r in ("ap", "eu", "us")])
        self.peers = {r: Registry.open(self.copy(r)) for r in ("us", "ap")}
        for r in self.peers:
            self.beat(r, time.time())

    def copy(self, region: str) -> Path:
        return self.root / "data" / "_follow" / f"{region}.db"

    def beat(self, region: str, at: float) -> None:
        reg = self.peers[region]
        with reg.transaction():
            reg.set_agent(region, f"host-{region}", "r1", at)

    def hold(self, region: str, name: str, generation: int = 1, status: str = "active"
             ) -> Path:
        """``region``'s registry holds ``name`` (routed at ``<name>.example.com``)."""
        reg = self.local if region == "eu" else self.peers[region]
        path = self.root / "data" / region / f"{name}.db"
        if region == "eu":
            make_db(path, 3)
        with reg.transaction():
            reg.upsert_tenant(name, region, path, 3, status)
            reg.update_tenant(name, generation=generation)
            reg.set_domain(f"{name}.example.com", name)
        return path

    def close(self) -> None:
        self.local.close()
        for reg in self.peers.values():
            reg.close()


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Fleetlet]:
    f = Fleetlet(tmp_path)
    yield f
    f.close()


@pytest.fixture
def router(hosts: Fleetlet) -> Iterator[Router]:
    r = Router(hosts.central, stale_after=10.0)
    yield r
    r.close()


def test_a_local_tenant_is_served_from_here_without_asking_the_other_regions(
        hosts: Fleetlet, router: Router) -> None:
    hosts.hold("eu", "aaron")
    hosts.copy("us").write_bytes(b"garbage that no lookup may need")  # and never reads
    with router.connect("aaron.example.com") as db:
        assert db.tenant.region == "eu"


def test_a_tenant_held_in_another_region_says_where_with_endpoint_and_age(
        hosts: Fleetlet, router: Router) -> None:
    hosts.hold("us", "acme")
    hosts.beat("us", time.time() - 4)
    for call in (router.resolve, router.connect):
        with pytest.raises(TenantElsewhere) as info:
            call("Acme.Example.COM")
        e = info.value
        assert (e.tenant.name, e.region, e.endpoint, e.http_status) == \
            ("acme", "us", "https://us.example.com", 307)
        assert e.age is not None and 4 <= e.age < 6
        assert "lives in region us at https://us.example.com" in str(e)


def test_the_highest_generation_wins_whichever_registry_is_read_first(
        hosts: Fleetlet, router: Router) -> None:
    hosts.hold("ap", "acme", generation=2)  # ap is read before us
    hosts.hold("us", "acme", generation=3)
    with pytest.raises(TenantElsewhere) as info:
        router.resolve("acme.example.com")
    assert (info.value.region, info.value.generation) == ("us", 3)
    hosts.hold("ap", "acme", generation=4)
    with pytest.raises(TenantElsewhere) as info:
        router.resolve("acme.example.com")
    assert (info.value.region, info.value.generation) == ("ap", 4)


def test_a_local_copy_being_handed_off_yields_to_the_higher_generation_elsewhere(
        hosts: Fleetlet, router: Router) -> None:
    hosts.hold("eu", "aaron", generation=1, status="relocating")
    with pytest.raises(TenantUnavailable, match="relocating") as unavailable:
        router.connect("aaron.example.com")  # nobody registered it yet: 503, as today
    assert not isinstance(unavailable.value, TenantElsewhere | CannotTell)
    hosts.hold("us", "aaron", generation=2)
    for call in (router.resolve, router.connect):
        with pytest.raises(TenantElsewhere) as info:
            call("aaron.example.com")
        assert info.value.region == "us"


def test_a_tie_in_generation_keeps_the_local_row(hosts: Fleetlet, router: Router) -> None:
    hosts.hold("eu", "aaron", generation=2, status="relocating")
    hosts.hold("us", "aaron", generation=2)
    with pytest.raises(TenantUnavailable, match="relocating") as info:
        router.connect("aaron.example.com")
    assert not isinstance(info.value, TenantElsewhere)


def test_the_winner_not_servable_where_it_is_is_unavailable_naming_its_region(
        hosts: Fleetlet, router: Router) -> None:
    hosts.hold("us", "acme", generation=2, status="suspended")
    with pytest.raises(TenantUnavailable, match="in region us: suspended"):
        router.connect("acme.example.com")


def test_held_nowhere_with_a_stale_view_is_cannot_tell_never_not_found(
        hosts: Fleetlet, router: Router) -> None:
    hosts.beat("ap", time.time() - 45)
    with pytest.raises(CannotTell) as info:
        router.connect("nobody.example.com")
    e = info.value
    assert e.http_status == 503 and isinstance(e, TenantUnavailable)
    assert set(e.views) == {"ap"} and e.views["ap"] is not None and e.views["ap"] >= 45
    assert "region ap's registry view is 45 s old (stale after 10 s)" in str(e)
    hosts.beat("ap", time.time())  # its follower caught up: now it can tell
    with pytest.raises(TenantNotFound):
        router.connect("nobody.example.com")


def test_held_nowhere_with_a_missing_or_unreadable_copy_is_cannot_tell(
        hosts: Fleetlet, router: Router) -> None:
    hosts.peers["us"].close()
    for p in hosts.copy("us").parent.glob("us.db*"):
        p.unlink()
    with pytest.raises(CannotTell, match="region us's registry view is missing"):
        router.resolve("nobody.example.com")
    hosts.copy("us").write_bytes(b"half a restore" * 300)
    with pytest.raises(CannotTell, match="region us's registry view is missing"):
        router.resolve("nobody.example.com")


def test_a_tenant_seen_in_a_stale_view_is_still_elsewhere_with_that_age(
        hosts: Fleetlet, router: Router) -> None:
    hosts.hold("us", "acme")
    hosts.beat("us", time.time() - 100)
    with pytest.raises(TenantElsewhere) as info:
        router.resolve("acme.example.com")
    assert info.value.age is not None and info.value.age >= 100  # the caller judges it


def test_a_single_host_registry_without_regions_is_not_found_as_before(
        tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "central.db")
    with Router(tmp_path / "central.db") as router, pytest.raises(TenantNotFound):
        router.resolve("nobody.example.com")
    reg.close()
