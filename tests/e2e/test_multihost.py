"""Issue 15 items 2 and 4 across real hosts: each "host" is its own clone with its own
data root and agent (``reconcile daemon --git-pull --region R``), sharing nothing but the
git remote and the replica store (see ``hostkit``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.hostkit import Hosts, git, wait_for


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    kit = Hosts(tmp_path, replica=(tmp_path / "replica").as_uri(),
                regions={"eu": {"endpoint": "https://eu.example.com"},
                         "us": {"endpoint": "https://us.example.com"}})
    yield kit
    kit.stop_all()


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
