"""What the one-shot commands say on a region agent's host (issue 15), through the real
CLI on two real hosts (``hostkit``: own clones, own data roots, agents running, a shared
``file://`` replica store): ``validate`` and ``status`` describe the whole file and what
this host holds, ``route`` answers every outcome under ``--json`` and names the
generation another region's registry holds a tenant at."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.hostkit import Hosts, wait_for

EU = {"aaron": {"region": "eu"}, "abel": {"region": "eu"}}
US = {"acme": {"region": "us"}, "initech": {"region": "us"}, "umbrella": {"region": "us"}}


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    """eu and us agents running, each with a fresh view of the other's registry."""
    root = tmp_path_factory.mktemp("two-hosts")
    kit = Hosts(root, replica=(root / "replica").as_uri(),
                regions={"eu": {"endpoint": "https://eu.example.com"},
                         "us": {"endpoint": "https://us.example.com"}})
    try:
        kit.push({**EU, **US}, "five tenants in two regions")
        eu, us = kit.host("eu").start(), kit.host("us").start()
        wait_for(lambda: eu.followed("us", "SELECT count(*) FROM tenants "
                                     "WHERE status = 'active'") == [(3,)],
                 what="eu's view of us's three tenants")
        wait_for(lambda: eu.registry("SELECT count(*) FROM tenants WHERE status = 'active'")
                 == [(2,)], what="eu's two tenants")
        assert us.running and eu.running
        yield kit
    finally:
        kit.stop_all()


def test_validate_on_a_region_host_describes_the_whole_file(hosts: Hosts) -> None:
    eu = hosts.host("eu")
    result = eu.run("validate")
    assert result.returncode == 0, result.stderr
    assert "ok — 5 tenants in 2 regions;" in result.stdout
    as_json = json.loads(eu.run("validate", "--json").stdout)
    assert (as_json["tenants"], as_json["regions"]) == (5, 2)


def test_status_on_a_region_host_says_what_it_holds_of_the_whole_fleet(hosts: Hosts) -> None:
    eu = hosts.host("eu")
    first = eu.run("status").stdout.splitlines()[0]
    assert first.startswith("Fleet: 5 tenants in 2 regions; this host (eu): 2 tenants,"), first
    declared = json.loads(eu.run("status", "--json").stdout)["declared"]
    assert declared == {"tenants": 5, "regions": 2, "region": "eu"}


@pytest.mark.parametrize("host", ["nobody.yoursaas.com", "Not A Host!"])
def test_route_with_json_answers_an_error_as_a_json_object(hosts: Hosts, host: str) -> None:
    result = hosts.host("eu").run("--json", "route", host)
    assert result.returncode == 1, result.stderr
    answer = json.loads(result.stdout)
    assert answer["ok"] is False and answer["host"] == host
    assert answer["error"] == ("tenant_not_found" if "nobody" in host else "invalid_input")
    assert answer["http_status"] == (404 if "nobody" in host else 400)
    plain = hosts.host("eu").run("route", host)  # without --json: a line on stderr
    assert plain.returncode == 1 and plain.stdout == "" and plain.stderr.startswith("error: ")


def test_route_to_a_tenant_on_another_host_names_its_generation(hosts: Hosts) -> None:
    eu, us = hosts.host("eu"), hosts.host("us")
    [(generation,)] = us.registry("SELECT generation FROM tenants WHERE name = 'acme'")
    result = eu.run("route", "acme.yoursaas.com")
    assert result.returncode == 0, result.stderr
    assert f"status   active (generation {generation} as registered there)" in result.stdout
    as_json = json.loads(eu.run("--json", "route", "acme.yoursaas.com").stdout)
    assert as_json["generation"] == generation
