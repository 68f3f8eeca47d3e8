"""Unit tests of the compact renderings, grouped plans, fleet counts, colour and wording:
real ``Plan``, ``Result`` and ``StatusRow`` values, no files or processes."""

from __future__ import annotations

import io
import os
import pty
from pathlib import Path

from reconciler import compact, render, status, terminal, wording
from reconciler.actions import Action, Kind, Plan, RegistryChange
from reconciler.apply import Result
from reconciler.context import Outcome
from reconciler.plan import waves
from reconciler.revision import short
from reconciler.status import StatusRow


def names(n: int) -> list[str]:
    return [f"t{i:04d}" for i in range(n)]


def migrate_plan(n: int, from_version: int = 2, region: str = "us", batch: int = 25) -> Plan:
    tenants = names(n)
    return Plan("3f2a9c1d00", 3, n, tuple(
        Action(Kind.MIGRATE, t, region=region, from_version=from_version, to_version=3)
        for t in tenants), waves=waves(tenants, 1, batch))


# -- wording -------------------------------------------------------------------------------

def test_plural_says_one_for_one_and_groups_thousands() -> None:
    assert wording.plural(1, "problem") == "1 problem"
    assert wording.plural(0, "problem") == "0 problems"
    assert wording.plural(9812, "tenant") == "9,812 tenants"
    assert wording.plural(2, "registry correction") == "2 registry corrections"
    assert wording.plural(2, "child", "children") == "2 children"


def test_short_hashes_have_one_length_for_commits_and_file_digests() -> None:
    assert short("3f2a9c1d00e1b2c3") == "3f2a9c1"
    assert short("3f2a9c1d00e1b2c3+dirty") == "3f2a9c1+dirty"
    assert short("sha256:" + "ab" * 32) == "sha256:abababa"


# -- plans ---------------------------------------------------------------------------------

def test_a_large_migration_is_one_line_with_its_count_versions_and_waves() -> None:
    lines = render.plan_lines(migrate_plan(9812), "tenants.yaml")
    assert lines[0] == "Plan for tenants.yaml @ 3f2a9c1 — 9,812 tenants, target schema 3"
    assert lines[1] == "  ~ migrate   9,812 tenants  us  v2  → v3 in 394 waves (t0000 … t9811)"
    assert lines[-1] == ("Plan: 0 to create, 9,812 to migrate, 0 to relocate, 0 to archive; "
                         "0 problems.")
    assert len(lines) < 20


def test_up_to_20_actions_of_a_kind_keep_one_line_each() -> None:
    lines = render.plan_lines(migrate_plan(20), "tenants.yaml")
    assert len([ln for ln in lines if ln.startswith("  ~ migrate   t0")]) == 20
    grouped = render.plan_lines(migrate_plan(21), "tenants.yaml")
    assert [ln for ln in grouped if ln.startswith("  ~ migrate")] == [
        "  ~ migrate   21 tenants  us  v2  → v3 in 2 waves (t0000 … t0020)"]


def test_verbose_plans_and_json_list_every_tenant_of_a_grouped_set() -> None:
    p = migrate_plan(100)
    verbose = render.plan_lines(p, "tenants.yaml", verbose=True)
    assert len([ln for ln in verbose if ln.startswith("  ~ migrate")]) == 100
    assert [a["tenant"] for a in render.plan_json(p)["actions"]] == names(100)


def test_groups_keep_sets_with_different_regions_or_versions_apart_and_small_kinds_whole(
        ) -> None:
    actions = [Action(Kind.RELOCATE, "zed", region="us", from_region="eu", from_version=3)]
    actions += [Action(Kind.MIGRATE, t, region="eu" if i % 2 else "us",
                       from_version=1 if i < 30 else 2, to_version=3)
                for i, t in enumerate(names(60))]
    routes = tuple(RegistryChange("domains", f"{t}.yoursaas.com", None, t) for t in names(25))
    p = Plan("abc", 3, 61, tuple(actions), registry=routes)
    lines = render.plan_lines(p, "tenants.yaml")
    body = [ln.split() for ln in lines if ln[:4] in ("  ~ ", "  > ", "  + ")]
    assert body == [  # in plan order; a group where its first member was
        [">", "relocate", "zed", "eu", "→", "us", "v3"],
        ["~", "migrate", "15", "tenants", "us", "v1", "→", "v3", "(t0000", "…", "t0028)"],
        ["~", "migrate", "15", "tenants", "eu", "v1", "→", "v3", "(t0001", "…", "t0029)"],
        ["~", "migrate", "15", "tenants", "us", "v2", "→", "v3", "(t0030", "…", "t0058)"],
        ["~", "migrate", "15", "tenants", "eu", "v2", "→", "v3", "(t0031", "…", "t0059)"],
        ["+", "route", "25", "domains", "added", "(t0000.yoursaas.com", "…",
         "t0024.yoursaas.com)"],
    ]


# -- apply results -------------------------------------------------------------------------

def result_of(n_ok: int, failed: tuple[str, ...] = (), missing: tuple[str, ...] = ()
              ) -> Result:
    ok = names(n_ok)
    actions = [Action(Kind.CREATE, t, region="eu", to_version=3) for t in ok]
    actions += [Action(Kind.MIGRATE, t, region="us", from_version=2, to_version=3)
                for t in failed]
    actions += [Action(Kind.MISSING, t, region="us", from_version=3, detail="file is gone")
                for t in missing]
    outcomes = [Outcome(t, "create", "ok", 0, 3) for t in ok]
    outcomes += [Outcome(t, "migrate", "failed", 2, 2, error="boom") for t in failed]
    plan_ = Plan("abc1234", 3, len(actions), tuple(actions))
    return Result(plan_, tuple(outcomes))


def test_a_large_result_is_counts_then_only_failures_and_problems() -> None:
    r = result_of(400, failed=("x1", "x2"), missing=("m1",))
    lines = compact.result_lines(r, "400 in sync, 2 failed, 1 problem, rev abc1234")
    assert lines == [
        "Applied: 400 created, 2 failed",
        "  failed   migrate   x1 us v2: boom",
        "  failed   migrate   x2 us v2: boom",
        "  problem  missing   m1 us: file is gone",
        "400 in sync, 2 failed, 1 problem, rev abc1234",
    ]


def test_a_result_of_at_most_20_actions_lists_each_and_the_full_rendering_lists_all() -> None:
    small = compact.result_lines(result_of(20), "20 in sync")
    assert small[:2] == ["  ok       create    t0000 eu v0 → v3",
                         "  ok       create    t0001 eu v0 → v3"]
    assert len(small) == 21
    assert len(render.result_lines(result_of(400), "s")) == 401  # pipes and --verbose


def test_more_than_10_problems_of_a_kind_end_in_a_count() -> None:
    r = result_of(0, failed=tuple(f"f{i:02d}" for i in range(30)),
                  missing=tuple(f"m{i:02d}" for i in range(12)))
    lines = compact.result_lines(r, "summary")
    assert lines[0] == "Applied: 30 failed"
    assert len([ln for ln in lines if ln.startswith("  failed   migrate")]) == 10
    assert "  failed   … 20 more tenants (`reconcile status` lists them all)" in lines
    assert len([ln for ln in lines if ln.startswith("  problem  missing   m")]) == 10
    assert "  problem  missing   … 2 more tenants (`reconcile status` lists them all)" in lines


def test_a_no_op_pass_counts_nothing() -> None:
    assert compact.outcome_counts(Result(Plan("a", 3, 0, ()), ())) == "Applied: nothing"


# -- status --------------------------------------------------------------------------------

def srow(name: str, region: str = "eu", version: int | None = 3, st: str = "active",
         pending: str = "", **extra: object) -> StatusRow:
    return StatusRow(name, region, 3, region, version, st, pending, **extra)  # type: ignore[arg-type]


def test_fleet_counts_per_region_and_version_and_each_named_count() -> None:
    rows = [srow("a"), srow("b", version=2, pending="migrate", changing=True,
                             kinds=("migrate",)),
            srow("c", "us", pinned=True), srow("d", "us", None, "missing", "missing",
                                                problem="file is gone", kinds=("missing",)),
            srow("e", "us", 2, "failed", "failed", problem="boom", kinds=("failed",))]
    fleet = status.fleet_counts(rows)
    assert fleet.versions == (2, 3, None)
    assert fleet.by_region == (("eu", ((2, 1), (3, 1), (None, 0))),
                               ("us", ((2, 1), (3, 1), (None, 1))))
    assert dict(fleet.counts) == {"in sync": 2, "pending": 1, "pinned": 1, "failed": 1,
                                  "missing": 1, "orphaned": 0, "suspended": 0,
                                  "drifted": 0, "waiting": 0}
    assert status.counts_json(fleet)["regions"] == {"eu": {"v2": 1, "v3": 1},
                                                    "us": {"v2": 1, "v3": 1, "none": 1}}
    lines = compact.status_lines(fleet, rows, target=3, show_all=False)
    assert lines[:5] == ["Fleet: 5 tenants in 2 regions, target schema v3",
                         "  REGION  TENANTS  v2  v3  no file",
                         "  eu            2   1   1        -",
                         "  us            3   1   1        1",
                         "  all           5   2   2        1"]
    assert lines[6] == "Needs a person (2):"
    assert [ln.split()[0] for ln in lines[8:10]] == ["d", "e"]
    assert lines[10] == "Next pass: 1 to migrate (b) — `reconcile --dry-run` shows the plan"
    every = compact.status_lines(fleet, rows, target=3, show_all=True)
    assert [ln.split()[0] for ln in every[7:]] == ["a", "b", "c", "d", "e"]


def test_one_region_has_no_total_row() -> None:
    lines = compact.status_lines(status.fleet_counts([srow("a")]), [srow("a")], target=3,
                                 show_all=False)
    assert lines[:3] == ["Fleet: 1 tenant in 1 region, target schema v3",
                         "  REGION  TENANTS  v3", "  eu            1   1"]
    assert lines[-1] == "Every tenant is in sync."


# -- colour --------------------------------------------------------------------------------

def test_colour_only_on_a_terminal_without_no_color_or_a_dumb_terminal() -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert terminal.colour_wanted(tty, {})
            assert terminal.colour_wanted(tty, {"NO_COLOR": ""})
            assert not terminal.colour_wanted(tty, {"NO_COLOR": "1"})
            assert not terminal.colour_wanted(tty, {"NO_COLOR": "0"})  # any non-empty value
            assert not terminal.colour_wanted(tty, {"TERM": "dumb"})
        assert not terminal.colour_wanted(io.StringIO(), {})
        with Path(os.devnull).open("w") as null:
            assert not terminal.colour_wanted(null, {})
    finally:
        os.close(master)
        os.close(slave)


def test_plan_lines_are_coloured_by_their_symbol_and_other_lines_left_alone() -> None:
    lines = ["Plan for x", "  + create    a", "  ! missing   b", "  wave 1  a",
             "Plan: 1 to create"]
    painted = terminal.Style(True).plan_lines(lines)
    assert painted == ["Plan for x", "\x1b[32m  + create    a\x1b[0m",
                       "\x1b[1;31m  ! missing   b\x1b[0m", "  wave 1  a", "Plan: 1 to create"]
    assert terminal.PLAIN.plan_lines(lines) == lines


# -- history -------------------------------------------------------------------------------

def test_history_names_regions_and_versions_once_when_they_did_not_change() -> None:
    def event(action: str, **detail: object) -> dict[str, object]:
        return {"id": 1, "at": "t", "revision": "0123456789abcdef", "tenant": "globex",
                "action": action, "outcome": "ok", "duration_ms": 3, "detail": detail}
    assert render.event_detail(event("relocate", from_region="eu", region="us",
                                     from_version=3, to_version=3)) == "eu → us; v3"
    assert render.event_detail(event("create", region="eu", from_version=0,
                                     to_version=3)) == "eu; v0 → v3"
    assert render.event_detail(event("wave", wave=1, waves=9, tenants=["a"], failed=1,
                                     failures=1, halted=True)) == \
        "wave 1/9: 1 tenant, 1 failed (1 in the rollout) — halted"
    head, row = render.history_lines([event("create", region="eu")])
    assert head.split()[2] == "REVISION"
    assert row.split()[2] == "0123456"
    assert head.split()[7] == "AGENT" and row.split()[7] == "-"  # recorded before issue 15
    _, row = render.history_lines([{**event("create", region="eu"), "agent": "eu@host-eu"}])
    assert row.split()[7] == "eu@host-eu"
