"""``--region NAME`` (issue 15 item 1): the option an agent is started with, through the
real CLI. A second ``--region``, a region tenants.yaml does not declare, or an agent
without ``settings.backup`` is refused before anything is written, naming what to do."""

from __future__ import annotations

import pytest

from tests.conftest import Fleet
from tests.e2e.conftest import listing


@pytest.fixture
def declared(fleet: Fleet) -> Fleet:
    fleet.use_shipped_migrations()
    fleet.declare({"aaron": {"region": "eu"}, "acme": {"region": "us"}},
                  backup={"replica": f"file://{fleet.root / 'replica'}"})
    return fleet


@pytest.mark.parametrize("command", [("plan",), ("apply",), (), ("--dry-run",), ("daemon",)])
def test_a_second_region_is_refused_and_nothing_is_written(
        declared: Fleet, command: tuple[str, ...]) -> None:
    before = listing(declared.root)
    result = declared.run(*command, "--region", "eu", "--region", "us", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "--region: given 2 times (eu, us): an agent serves one region" in result.stderr
    assert "run one agent per region host" in result.stderr
    assert "Traceback" not in result.stderr
    assert listing(declared.root) == before


@pytest.mark.parametrize("command", [("plan",), ("apply",), ("daemon",)])
def test_an_undeclared_region_is_an_error_naming_it(
        declared: Fleet, command: tuple[str, ...]) -> None:
    before = listing(declared.root)
    result = declared.run(*command, "--region", "mars", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "region 'mars' is not declared in" in result.stderr
    assert "(declared: eu, us)" in result.stderr
    assert listing(declared.root) == before


@pytest.mark.parametrize("command", [("plan",), ("apply",), ("daemon",)])
def test_an_agent_needs_settings_backup(fleet: Fleet, command: tuple[str, ...]) -> None:
    fleet.use_shipped_migrations()
    fleet.declare({"aaron": {"region": "eu"}})
    before = listing(fleet.root)
    result = fleet.run(*command, "--region", "eu", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "--region eu needs settings.backup" in result.stderr
    assert "add `settings: {backup: {replica:" in result.stderr
    assert listing(fleet.root) == before


@pytest.mark.parametrize("command", [("status",), ("history",), ("gc", "--retired-older-than",
                                                                   "1d")])
def test_commands_that_are_no_pass_refuse_region(declared: Fleet,
                                                 command: tuple[str, ...]) -> None:
    result = declared.run("--region", "eu", *command, timeout=60)
    assert result.returncode == 1
    assert f"`reconcile {command[0]}` does not take --region: it would be ignored" \
        in result.stderr


def _region_host(declared: Fleet) -> Fleet:
    """``declared`` after one pass of eu's agent: its registry's agent row names eu."""
    result = declared.run("apply", "--region", "eu", timeout=120)
    assert result.returncode in (0, 2), result.stderr
    assert declared.registry("SELECT region FROM agent") == [("eu",)]
    return declared


@pytest.mark.parametrize("command", [(), ("apply",), ("plan",), ("--dry-run",)])
def test_a_command_without_region_on_a_region_host_acts_as_that_regions_agent(
        declared: Fleet, command: tuple[str, ...]) -> None:
    # a plain `reconcile` on eu's host once created empty copies of us's tenants there
    host = _region_host(declared)
    result = host.run(*command, timeout=120)
    assert "Traceback" not in result.stderr
    assert "acme" not in result.stdout  # us's tenant is not this host's business
    assert host.registry("SELECT name FROM tenants WHERE region = 'us'") == []
    assert not (host.root / "data" / "us").exists()


@pytest.mark.parametrize("command", [("apply",), ("plan",), ("daemon",)])
def test_another_region_on_a_region_agents_registry_is_refused(
        declared: Fleet, command: tuple[str, ...]) -> None:
    host = _region_host(declared)
    before = listing(host.root / "data")
    result = host.run(*command, "--region", "us", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "is the registry of region eu's agent, not us's" in result.stderr
    assert "run it with `--region eu` on this host" in result.stderr
    assert listing(host.root / "data") == before


def test_a_daemon_without_region_on_a_region_agents_registry_is_refused_at_once(
        declared: Fleet) -> None:
    host = _region_host(declared)
    before = listing(host.root / "data")
    result = host.run("daemon", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "is the registry of region eu's agent: the daemon on this host serves that " \
           "region only" in result.stderr
    assert "run it with `--region eu` on this host" in result.stderr
    assert listing(host.root / "data") == before


def test_status_and_route_on_a_region_host_say_what_waits_and_what_cannot_be_told(
        declared: Fleet) -> None:
    # eu's agent cannot know whether us holds aaron (no copy of us's registry yet): aaron
    # waits, which is not "in sync", and us's tenant is "cannot tell", never "not found"
    host = _region_host(declared)
    result = host.run("apply", "--region", "eu", timeout=120)
    assert "0 in sync, 1 waiting" in result.stdout + result.stderr
    status = host.run("status", timeout=60)
    assert "waiting 1" in status.stdout
    assert "Waiting (1): aaron — `reconcile plan` says why" in status.stdout
    assert "Every tenant is in sync" not in status.stdout
    route = host.run("route", "acme.yoursaas.com", timeout=60)
    assert route.returncode == 1
    assert "cannot tell where acme.yoursaas.com lives: region us's registry view is " \
           "missing" in route.stderr


@pytest.mark.parametrize("name", ["", "eu;rm", "Mars"])
def test_an_invalid_region_name_is_said_invalid_and_only_declared_regions_are_suggested(
        declared: Fleet, name: str) -> None:
    before = listing(declared.root)
    result = declared.run("plan", "--region", name, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"--region: {name!r} is not a valid region name (a lowercase DNS label" \
        in result.stderr
    assert f"write one of the regions {declared.config} declares: eu, us" in result.stderr
    assert "regions: {" not in result.stderr  # never `regions: {eu;rm: …}`
    assert "Traceback" not in result.stderr
    assert listing(declared.root) == before


def test_a_declared_region_in_the_wrong_case_suggests_that_region(declared: Fleet) -> None:
    result = declared.run("plan", "--region", "EU", timeout=60)
    assert result.returncode == 1, result.stderr
    assert "--region: 'EU' is not a valid region name" in result.stderr
    assert "write `--region eu`" in result.stderr
    assert "regions: {EU" not in result.stderr


def test_a_valid_undeclared_region_may_be_declared(declared: Fleet) -> None:
    result = declared.run("plan", "--region", "mars", timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"region 'mars' is not declared in {declared.config} (declared: eu, us)" \
        in result.stderr
    assert "declare `regions: {mars: {path: ...}}` first" in result.stderr


@pytest.mark.parametrize("command", [("plan",), ("apply",), ("daemon",)])
def test_an_agent_refuses_a_relative_replica_path_naming_where_it_is_written(
        fleet: Fleet, command: tuple[str, ...]) -> None:
    fleet.use_shipped_migrations()
    fleet.declare({"aaron": {"region": "eu"}}, backup={"replica": "backups"})
    line = next(n for n, text in enumerate(fleet.config.read_text().splitlines(), 1)
                if "replica: backups" in text)
    before = listing(fleet.root)
    result = fleet.run(*command, "--region", "eu", timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"{fleet.config}:{line}:" in result.stderr
    assert "settings.backup.replica 'backups' is a relative path" in result.stderr
    assert "write a replica every host reaches: nats://HOST:4222/BUCKET" in result.stderr
    assert "Traceback" not in result.stderr
    assert listing(fleet.root) == before
    single = fleet.run("plan", timeout=60)  # one host serving every region: still fine
    assert single.returncode == 2, single.stderr
