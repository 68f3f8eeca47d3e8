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
