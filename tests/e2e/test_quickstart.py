"""The README's promise: the shipped tenants.yaml converges as-is, and stays converged."""

from __future__ import annotations

import shutil

from tests.conftest import REPO, Fleet


def test_shipped_tenants_yaml_converges_and_second_pass_is_a_noop(fleet: Fleet) -> None:
    shutil.copy(REPO / "tenants.yaml", fleet.config)
    first = fleet.run("apply")
    assert first.returncode == 0, first.stdout + first.stderr
    assert fleet.user_version(fleet.path("aaron", "eu")) == 3
    assert fleet.user_version(fleet.path("globex", "eu")) == 2  # pinned
    before = fleet.tenant_digests()
    second = fleet.run("apply")
    assert second.returncode == 0, second.stdout + second.stderr
    assert fleet.tenant_digests() == before
    plan = fleet.run("--dry-run")
    assert plan.returncode == 0, plan.stdout
    assert "No changes" in plan.stdout
