"""Unit tests of the planner's fleet identity rules (issue 12 items 1, 2, 7, 10): a
registry naming files outside the fleet's directories is rerooted, never acted on
there; every change apply makes is in the plan; acknowledged orphans are no problem."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from reconciler import fleet as fleet_mod
from reconciler import render
from reconciler.actions import Kind
from reconciler.plan import plan
from reconciler.state import FileState, FleetState, JournalRow, Observed, TenantRow
from tests.test_plan import DATA, catalog, desired, kinds, observed, row

OLD = Path("/prod/data")


def old_row(name: str, region: str = "eu", version: int = 3, status: str = "active"
            ) -> TenantRow:
    return TenantRow(name, region, str(OLD / region / f"{name}.db"), version, status)


def with_fleet(obs: Observed, d_fleet: FleetState) -> Observed:
    return replace(obs, fleet=d_fleet)


def fleet_state(d: object, rows: list[TenantRow], origin: str | None = "moved",
                shared: tuple[str, ...] = ()) -> FleetState:
    from reconciler.desired import Desired
    assert isinstance(d, Desired)
    the_fence = fleet_mod.fence(d)
    outside = [r for r in rows if not the_fence.holds(r.path)]
    rerooted = {r.name: fleet_mod.home(d, r) for r in outside}
    return FleetState(str(DATA / "central.db"), the_fence, str(OLD / "central.db"), origin,
                      shared, MappingProxyType({k: v for k, v in rerooted.items() if v}),
                      tuple(sorted(k for k, v in rerooted.items() if v is None)))


def test_registry_paths_outside_the_fleet_are_rerooted_first_never_relocated() -> None:
    d = desired({"a": {"region": "eu"}, "b": {"region": "us"}})
    rows = [old_row("a"), old_row("b", "us", version=1)]
    obs = with_fleet(observed(rows, {"eu/a.db": 3, "us/b.db": 1}), fleet_state(d, rows))
    p = plan(d, obs, catalog())
    assert kinds(p) == ["reroot", "reroot", "migrate"]
    reroot = p.actions[0]
    assert reroot.source == OLD / "eu" / "a.db" and reroot.path == DATA / "eu" / "a.db"
    assert all(a.kind is not Kind.RELOCATE for a in p.actions)
    # the migration acts on this fleet's file, not the registered one
    assert p.actions[2].path == DATA / "us" / "b.db"
    assert [(c.table, c.key, c.old, c.new) for c in p.registry if c.table == "fleet"] == [
        ("fleet", "moved", str(OLD / "central.db"), str(DATA / "central.db"))]
    assert not p.is_empty


def test_a_rerooted_tenant_whose_file_is_not_in_this_fleet_is_missing_not_created() -> None:
    d = desired({"a": {"region": "eu"}})
    rows = [old_row("a")]
    p = plan(d, with_fleet(observed(rows, {}), fleet_state(d, rows)), catalog())
    assert kinds(p) == ["reroot", "missing"]
    detail = p.actions[1].detail
    assert str(DATA / "eu" / "a.db") in detail and str(OLD / "eu" / "a.db") in detail
    assert "outside this fleet's directories (not looked at)" in detail
    assert f"move them into {DATA / 'eu'}" in detail


def test_a_row_outside_the_fleet_in_an_undeclared_region_is_reported_untouched() -> None:
    d = desired({"a": {"region": "eu"}})
    rows = [old_row("a", "ap")]
    p = plan(d, with_fleet(observed(rows, {"eu/a.db": 3}), fleet_state(d, rows)), catalog())
    assert kinds(p) == ["invalid"]
    assert "no longer declares" in p.actions[0].detail


def test_orphans_and_archived_rows_outside_the_fleet_are_rerooted_too() -> None:
    d = desired({})
    rows = [old_row("o"), TenantRow("z", "eu", str(OLD / "_archive" / "z-1.db"), 3, "archived")]
    obs = with_fleet(observed(rows, {"eu/o.db": 3}), fleet_state(d, rows))
    p = plan(d, obs, catalog())
    assert kinds(p) == ["reroot", "reroot", "orphaned"]
    assert {a.path for a in p.actions if a.kind is Kind.REROOT} == {
        DATA / "eu" / "o.db", DATA / "_archive" / "z-1.db"}


def test_an_unfinished_operation_naming_files_outside_the_fleet_is_not_resumed() -> None:
    d = desired({"a": {"region": "us"}})
    rows = [old_row("a")]
    journal = {"a": JournalRow("a", "relocate", "copy", str(OLD / "eu" / "a.db"),
                               str(OLD / "us" / "a.db"), str(OLD / "us" / ".a.db.relocating"),
                               "2026-01-01T00:00:00.000Z", None)}
    obs = with_fleet(observed(rows, {"eu/a.db": 3}, journal=journal), fleet_state(d, rows))
    p = plan(d, obs, catalog())
    assert kinds(p, "a")[-1] == "invalid"
    assert "not resumed" in p.actions[-1].detail
    assert not any(a.kind in (Kind.RELOCATE, Kind.MIGRATE) for a in p.actions)


def test_a_registered_file_gone_with_a_database_at_its_declared_path_is_rerooted() -> None:
    d = desired({"a": {"region": "us"}})
    rows = [row("a", "eu")]
    obs = with_fleet(observed(rows, {"us/a.db": 3}), fleet_state(d, rows, origin=None))
    p = plan(d, obs, catalog())
    assert kinds(p) == ["reroot"]  # no missing, no relocate, no copy
    a = p.actions[0]
    assert (a.from_region, a.region, a.path) == ("eu", "us", DATA / "us" / "a.db")


def test_suspending_an_active_tenant_is_a_change_and_unsuspending_is_its_own() -> None:
    d = desired({"a": {"region": "eu", "suspended": True}})
    p = plan(d, observed([row("a")], {"eu/a.db": 3}), catalog())
    assert kinds(p) == ["suspend"] and p.changes and not p.is_empty
    assert p.actions[0].status == "suspended"

    back = plan(desired({"a": {"region": "eu"}}),
                observed([row("a", status="suspended")], {"eu/a.db": 3}), catalog())
    assert kinds(back) == ["unsuspend"] and back.actions[0].status == "active"

    lines = "\n".join(render.plan_lines(p, "tenants.yaml"))
    assert "| suspend" in lines and "1 to suspend" in lines
    assert "^ unsuspend" in "\n".join(render.plan_lines(back, "tenants.yaml"))
    assert render.plan_json(p)["actions"][0]["action"] == "suspend"
    assert [a["action"] for a in render.plan_json(p)["actions"] if a["change"]] == ["suspend"]


def test_retired_orphan_is_no_problem_not_routed_and_never_archived() -> None:
    d = replace(desired({"a": {"region": "eu"}}, prune=True), retired=frozenset({"old"}))
    obs = observed([row("a"), row("old")], {"eu/a.db": 3, "eu/old.db": 3})
    obs = replace(obs, registry=replace(obs.registry, domains=MappingProxyType(
        {"a.yoursaas.com": "a", "old.yoursaas.com": "old"})))
    p = plan(d, obs, catalog())
    assert kinds(p) == ["retired"] and not p.problems
    assert [(c.key, c.new) for c in p.registry] == [("old.yoursaas.com", None)]
    text = "\n".join(render.plan_lines(p, "tenants.yaml"))
    assert "retired" in text and "0 problems" in text


def test_a_copy_sharing_a_directory_with_its_original_is_refused() -> None:
    d = desired({"a": {"region": "eu"}})
    state = fleet_state(d, [], origin="copied", shared=(str(DATA / "us"),))
    why = fleet_mod.refusal(d, state)
    assert why is not None and str(DATA / "us") in why and "nothing was done" in why
    assert fleet_mod.refusal(d, fleet_state(d, [], origin="copied")) is None


def test_reroots_are_grouped_by_directory_in_the_text_plan_and_listed_in_json() -> None:
    d = desired({f"t{i}": {"region": "eu"} for i in range(5)})
    rows = [old_row(f"t{i}") for i in range(5)]
    files: dict[str, int | str] = {f"eu/t{i}.db": 3 for i in range(5)}
    p = plan(d, with_fleet(observed(rows, files), fleet_state(d, rows)), catalog())
    text = render.plan_lines(p, "tenants.yaml")
    reroot_lines = [" ".join(line.split()) for line in text if "* reroot" in line]
    assert reroot_lines == [f"* reroot eu: {OLD / 'eu'} → {DATA / 'eu'} "
                            "(5 tenants: t0, t1, t2, t3, t4)"]
    assert [a["action"] for a in render.plan_json(p)["actions"]] == ["reroot"] * 5


def test_the_fence_holds_only_files_directly_in_declared_directories() -> None:
    d = desired({})
    f = fleet_mod.fence(d)
    assert f.holds(DATA / "eu" / "a.db") and f.holds(str(DATA / "_retired" / "x.db"))
    assert not f.holds(DATA / "eu" / "sub" / "a.db")
    assert not f.holds(f"{DATA}/eu/../../../prod/data/eu/a.db")
    assert not f.holds(OLD / "eu" / "a.db") and not f.holds(DATA / "central.db")
    assert FileState(DATA / "x", False).exists is False


def test_a_retired_name_the_registry_does_not_know_is_noted_as_a_likely_typo() -> None:
    d = replace(desired({"a": {"region": "eu"}}), retired=frozenset({"oldcoo"}))
    p = plan(d, observed([row("a")], {"eu/a.db": 3}), catalog())
    assert p.notes == ("retired: oldcoo is not in the registry — nothing to acknowledge "
                       "(a typo, or already gone)",)


def test_an_unfinished_operation_moved_with_the_fleet_is_resumed_on_its_new_paths() -> None:
    d = desired({"a": {"region": "us"}})
    old = JournalRow("a", "relocate", "retire", str(OLD / "eu" / "a.db"),
                     str(OLD / "us" / "a.db"), str(OLD / "us" / ".a.db.relocating"),
                     "2026-01-01T00:00:00.000Z",
                     '{"retired_path": "/prod/data/_retired/a-eu-x.db", "to_region": "us"}')
    moved = {str(OLD / r): str(DATA / r) for r in ("eu", "us", "_retired")}
    new = fleet_mod.translated(old, moved, fleet_mod.fence(d))
    assert new is not None
    assert (new.source, new.dest, new.temp) == (
        str(DATA / "eu" / "a.db"), str(DATA / "us" / "a.db"), str(DATA / "us" / ".a.db.relocating"))
    assert new.details() == {"retired_path": str(DATA / "_retired" / "a-eu-x.db"),
                             "to_region": "us"}
    assert fleet_mod.translated(old, {}, fleet_mod.fence(d)) is None  # nowhere to go

    rows = [old_row("a", status="relocating")]
    state = replace(fleet_state(d, rows), journals=MappingProxyType({"a": new}))
    p = plan(d, with_fleet(observed(rows, {"us/a.db": 3}, journal={"a": old}), state),
             catalog())
    assert kinds(p) == ["reroot", "relocate"]
    assert p.actions[1].source == DATA / "eu" / "a.db" and "resume" in p.actions[1].detail
