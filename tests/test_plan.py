"""Unit tests of the pure planner: no files, no clock, no processes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from reconciler.actions import Kind, Plan
from reconciler.desired import Desired, Region, Rollout, Settings, TenantSpec
from reconciler.migrations import Catalog, Migration
from reconciler.plan import fingerprint, plan, waves
from reconciler.sqltext import Statement
from reconciler.state import FileState, Observed, RegionState, Snapshot, TenantRow

DATA = Path("/fleet/data")


def catalog(n: int = 3) -> Catalog:
    return Catalog(Path("/fleet/migrations"), tuple(
        Migration(v, f"m{v}", Path(f"/fleet/migrations/{v:04d}_m{v}.sql"), "sql", f"sha{v}",
                  (Statement(1, f"CREATE TABLE t{v} (x)"),)) for v in range(1, n + 1)))


def desired(tenants: dict[str, dict[str, Any]], **settings: Any) -> Desired:
    regions = {r: Region(r, DATA / r) for r in ("eu", "us")}
    specs = {name: TenantSpec(name=name, **spec) for name, spec in sorted(tenants.items())}
    defaults: dict[str, Any] = {"data_dir": DATA, "central": DATA / "central.db",
                                "migrations_dir": Path("/fleet/migrations"),
                                "domain": "yoursaas.com"}
    return Desired(Path("/fleet/tenants.yaml"), Settings(**(defaults | settings)),
                   MappingProxyType({}), MappingProxyType(regions), MappingProxyType(specs))


def row(name: str, region: str = "eu", version: int = 3, status: str = "active",
        **extra: Any) -> TenantRow:
    return TenantRow(name, region, str(DATA / region / f"{name}.db"), version, status,
                     **extra)


def observed(rows: list[TenantRow] = (), files: dict[str, int | str] | None = None,  # type: ignore[assignment]
             archives: dict[str, tuple[str, ...]] | None = None, journal: Any = None,
             region_problems: dict[str, str] | None = None, now: float = 1000.0) -> Observed:
    """``files``: path (relative to DATA) → user_version, or an error string."""
    states: dict[Path, FileState] = {}
    for rel, v in (files or {}).items():
        p = DATA / rel
        states[p] = (FileState(p, True, user_version=v) if isinstance(v, int)
                     else FileState(p, True, error=v))
    reg = Snapshot(True, MappingProxyType({r.name: r for r in rows}), MappingProxyType({}),
                   MappingProxyType({}), MappingProxyType({}), MappingProxyType(journal or {}),
                   MappingProxyType({}))
    regions = {r: RegionState(r, DATA / r, (region_problems or {}).get(r)) for r in ("eu", "us")}
    arch = {k: tuple(DATA / "_archive" / a for a in v) for k, v in (archives or {}).items()}
    return Observed(reg, MappingProxyType(states), MappingProxyType(regions),
                    MappingProxyType(arch), now)


def kinds(p: Plan, tenant: str | None = None) -> list[str]:
    return [a.kind.value for a in p.actions if tenant is None or a.tenant == tenant]


def test_empty_fleet_creates_every_declared_tenant_at_latest() -> None:
    p = plan(desired({"aaron": {"region": "eu"}, "acme": {"region": "us"}}), observed(),
             catalog())
    assert kinds(p) == ["create", "create"]
    assert [a.to_version for a in p.actions] == [3, 3]
    assert p.actions[0].path == DATA / "eu" / "aaron.db"


def test_pinned_tenant_is_created_at_its_pin_and_settings_schema_is_the_default() -> None:
    d = desired({"a": {"region": "eu", "schema": 1}, "b": {"region": "eu"}}, schema=2)
    p = plan(d, observed(), catalog())
    assert {a.tenant: a.to_version for a in p.actions} == {"a": 1, "b": 2}
    assert p.target == 2


def test_file_without_registry_row_is_adopted_then_migrated_keeping_its_data() -> None:
    p = plan(desired({"aaron": {"region": "eu"}}), observed(files={"eu/aaron.db": 1}),
             catalog())
    assert kinds(p) == ["adopt", "migrate"]
    assert (p.actions[1].from_version, p.actions[1].to_version) == (1, 3)


def test_file_that_is_not_sqlite_is_reported_not_adopted_or_overwritten() -> None:
    p = plan(desired({"aaron": {"region": "eu"}}),
             observed(files={"eu/aaron.db": "is not a SQLite database"}), catalog())
    assert kinds(p) == ["invalid"]
    assert p.problems and not p.changes


def test_registered_tenant_whose_file_vanished_is_missing_and_never_recreated() -> None:
    p = plan(desired({"hooli": {"region": "eu"}}), observed([row("hooli")]), catalog())
    assert kinds(p) == ["missing"]
    assert p.actions[0].status == "missing"
    assert "not recreated" in p.actions[0].detail
    assert not p.changes


def test_registry_behind_the_file_is_corrected_from_the_file() -> None:
    p = plan(desired({"a": {"region": "eu"}}), observed([row("a", version=1)],
                                                       {"eu/a.db": 3}), catalog())
    assert kinds(p) == ["correct"]
    assert (p.actions[0].from_version, p.actions[0].to_version) == (1, 3)


def test_registry_ahead_of_the_file_is_corrected_and_the_file_migrated() -> None:
    p = plan(desired({"a": {"region": "eu"}}), observed([row("a", version=3)],
                                                       {"eu/a.db": 1}), catalog())
    assert kinds(p) == ["correct", "migrate"]
    assert p.actions[1].from_version == 1


def test_converged_fleet_plans_nothing() -> None:
    p = plan(desired({"a": {"region": "eu"}}, domain=None), observed([row("a")], {"eu/a.db": 3}),
             catalog())
    assert p.actions == ()
    assert p.is_empty


def test_target_below_the_file_is_a_refused_downgrade() -> None:
    p = plan(desired({"a": {"region": "eu", "schema": 1}}), observed([row("a")],
                                                                    {"eu/a.db": 3}), catalog())
    assert kinds(p) == ["downgrade"]
    assert p.actions[0].is_problem and not p.changes


def test_undeclared_tenant_is_orphaned_and_left_alone_without_prune() -> None:
    p = plan(desired({"a": {"region": "eu"}}),
             observed([row("a"), row("old")], {"eu/a.db": 3, "eu/old.db": 3}), catalog())
    assert kinds(p, "old") == ["orphaned"]
    assert "prune: false" in p.actions[-1].detail


def test_prune_archive_respects_protected_and_prune_limit() -> None:
    rows = [row("keep")] + [row(f"old{i}") for i in range(4)] + [
        row("safe", protected=True)]
    files: dict[str, int | str] = {f"eu/{r.name}.db": 3 for r in rows}
    p = plan(desired({"keep": {"region": "eu"}}, prune=True, prune_limit=2),
             observed(rows, files), catalog())
    assert [a.tenant for a in p.actions if a.kind is Kind.ARCHIVE] == ["old0", "old1"]
    assert kinds(p, "safe") == ["orphaned"]
    assert kinds(p, "old2") == ["orphaned"] and "prune_limit" in p.notes[0]


def test_prune_never_archives_when_no_tenants_are_declared() -> None:
    p = plan(desired({}, prune=True), observed([row("a")], {"eu/a.db": 3}), catalog())
    assert kinds(p) == ["orphaned"]
    assert "declares no tenants" in p.actions[0].detail


def test_region_change_plans_a_relocation_then_the_migration() -> None:
    p = plan(desired({"a": {"region": "us"}}), observed([row("a", version=2)],
                                                       {"eu/a.db": 2}), catalog())
    assert kinds(p) == ["relocate", "migrate"]
    reloc = p.actions[0]
    assert (reloc.from_region, reloc.region) == ("eu", "us")
    assert reloc.source == DATA / "eu" / "a.db" and reloc.path == DATA / "us" / "a.db"


def test_region_directory_problem_blocks_that_tenant_only() -> None:
    p = plan(desired({"a": {"region": "us"}, "b": {"region": "eu"}}),
             observed(region_problems={"us": "symlink out of the data tree"}), catalog())
    assert kinds(p, "a") == ["invalid"]
    assert kinds(p, "b") == ["create"]


def test_suspended_tenant_is_left_alone_and_not_created() -> None:
    d = desired({"s": {"region": "eu", "suspended": True}, "n": {"region": "eu",
                                                                  "suspended": True}})
    p = plan(d, observed([row("s", version=1, status="suspended")], {"eu/s.db": 1}), catalog())
    assert kinds(p) == ["suspended", "suspended"]
    assert not p.changes  # (suspending an active tenant is a change: test_plan_identity.py)


def test_redeclared_archived_tenant_is_restored_from_its_newest_archive_never_created() -> None:
    p = plan(desired({"a": {"region": "eu"}}),
             observed([row("a", status="archived")],
                      {"_archive/a-20260101T000000Z.db": 2, "_archive/a-20260201T000000Z.db": 2},
                      archives={"a": ("a-20260101T000000Z.db", "a-20260201T000000Z.db")}),
             catalog())
    assert kinds(p) == ["restore", "migrate"]
    assert p.actions[0].source == DATA / "_archive" / "a-20260201T000000Z.db"


def test_archived_tenant_without_a_copy_is_reported_not_created_empty() -> None:
    p = plan(desired({"a": {"region": "eu"}}), observed([row("a", status="archived")]),
             catalog())
    assert kinds(p) == ["missing"]


def test_failed_tenant_waits_for_backoff_unless_retry_is_asked() -> None:
    d = desired({"a": {"region": "eu"}})
    key = fingerprint(catalog(), 3, "eu")
    failed = row("a", version=1, status="failed", failed_key=key, failures=1, retry_at=2000.0)
    obs = observed([failed], {"eu/a.db": 1}, now=1000.0)
    assert kinds(plan(d, obs, catalog())) == ["failed"]
    assert kinds(plan(d, obs, catalog(), retry_failed=True)) == ["migrate"]
    later = observed([failed], {"eu/a.db": 1}, now=3000.0)
    assert kinds(plan(d, later, catalog())) == ["migrate"]


def test_failed_tenant_is_retried_at_once_when_the_migrations_change() -> None:
    d = desired({"a": {"region": "eu"}})
    failed = row("a", version=1, status="failed", failed_key="stale", failures=3,
                 retry_at=99999.0)
    assert kinds(plan(d, observed([failed], {"eu/a.db": 1}), catalog())) == ["migrate"]


def test_waves_put_the_canary_alone_first_then_batches_in_name_order() -> None:
    assert waves(["e", "d", "c", "b", "a"], canary=1, batch=2) == (
        ("a",), ("b", "c"), ("d", "e"))
    assert waves(["b", "a"], canary=0, batch=25) == (("a", "b"),)


def test_plan_waves_follow_rollout_settings() -> None:
    d = desired({n: {"region": "eu"} for n in "abcd"}, rollout=Rollout(canary=1, batch=2))
    files: dict[str, int | str] = {f"eu/{n}.db": 1 for n in "abcd"}
    p = plan(d, observed([row(n, version=1) for n in "abcd"], files), catalog())
    assert p.waves == (("a",), ("b", "c"), ("d",))


def test_settings_and_domains_are_diffed_against_the_registry() -> None:
    d = desired({"acme": {"region": "us", "domains": ("acme.example.com",)}})
    p = plan(d, observed(), catalog())
    assert {(c.table, c.key, c.new) for c in p.registry} == {
        ("domains", "acme.yoursaas.com", "acme"), ("domains", "acme.example.com", "acme")}


def test_registry_domains_are_kept_for_orphans_and_dropped_for_stale_and_archived() -> None:
    d = desired({"acme": {"region": "us", "domains": ("acme.example.com",)},
                 "bob": {"region": "eu"}}, prune="archive")
    rows = [row("acme", "us"), row("bob"), row("orphan"), row("gone", status="archived")]
    files: dict[str, int | str] = {"us/acme.db": 3, "eu/bob.db": 3, "eu/orphan.db": 3}
    obs = observed(rows, files)
    registry_domains = {"acme.yoursaas.com": "acme", "acme.example.com": "acme",
                        "old.acme.example.com": "acme",  # no longer declared for acme
                        "bob.yoursaas.com": "bob", "orphan.yoursaas.com": "orphan",
                        "gone.yoursaas.com": "gone"}
    obs = replace(obs, registry=replace(obs.registry,
                                        domains=MappingProxyType(registry_domains)))
    changes = {(c.key, c.old, c.new) for c in plan(d, obs, catalog()).registry}
    # orphan is archived this pass (prune: archive), so its route goes too
    assert changes == {("old.acme.example.com", "acme", None),
                       ("orphan.yoursaas.com", "orphan", None),
                       ("gone.yoursaas.com", "gone", None)}
    kept = plan(replace(d, settings=replace(d.settings, prune=False)), obs, catalog())
    assert {(c.key, c.new) for c in kept.registry} == {  # orphan left alone keeps routing
        ("old.acme.example.com", None), ("gone.yoursaas.com", None)}
    assert plan(d, obs, catalog()).registry == plan(d, obs, catalog()).registry


def test_desired_domains_is_a_fresh_dict_each_time() -> None:
    d = desired({"acme": {"region": "us", "domains": ("acme.example.com",)}})
    first = d.domains()
    first["intruder.example.com"] = "acme"
    assert d.domains() == {"acme.yoursaas.com": "acme", "acme.example.com": "acme"}


def test_plan_is_deterministic() -> None:
    d = desired({n: {"region": "eu"} for n in ("zed", "amy", "bob")})
    assert plan(d, observed(), catalog()) == plan(d, observed(), catalog())
    assert [a.tenant for a in plan(d, observed(), catalog()).actions] == ["amy", "bob", "zed"]


def test_tenant_that_failed_its_health_gate_at_target_stays_failed_until_retry() -> None:
    d = desired({"a": {"region": "eu"}}, domain=None)
    key = fingerprint(catalog(), 3, "eu")
    failed = row("a", version=3, status="failed", failed_key=key, failure="health gate: x")
    obs = observed([failed], {"eu/a.db": 3})
    assert kinds(plan(d, obs, catalog())) == ["failed"]
    assert kinds(plan(d, obs, catalog(), retry_failed=True)) == ["correct"]


def test_health_gate_failure_at_target_stays_failed_after_its_backoff_expires() -> None:
    d = desired({"a": {"region": "eu"}}, domain=None)
    key = fingerprint(catalog(), 3, "eu")
    failed = row("a", version=3, status="failed", failed_key=key, failure="health gate: x",
                 failures=1, retry_at=10.0)
    assert kinds(plan(d, observed([failed], {"eu/a.db": 3}, now=5000.0), catalog())) == [
        "failed"]
