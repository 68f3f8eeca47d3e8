"""Region agents and cross-host relocation (issue 15 items 1 and 3), end to end.

Two "hosts": separate project folders, data roots and registries, each with its own
``reconcile daemon --region`` and Litestream, sharing only the replica store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.xmovekit import Hosts, Writer, live_copies, settle, titles


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    h = Hosts(tmp_path, f"file://{tmp_path / 'replica'}")
    yield h
    h.close()


def test_each_region_creates_its_tenants_only_on_its_host(hosts: Hosts) -> None:
    hosts.declare({"aaron": "eu", "acme": "us"})
    hosts.follow()
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
    hosts.follow()
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
    assert not eu.path("aaron").exists()
    assert list((eu.fleet.data / "_retired").glob("aaron-*.db"))
    assert us.status_of("acme") == "active"  # the rest of the region never stopped
