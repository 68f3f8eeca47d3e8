"""The planner's drift policy (pure): block, warn, ignore patterns, adopted files."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from reconciler.actions import Kind
from reconciler.plan import plan
from reconciler.schema import Difference
from reconciler.state import Observed
from tests.test_plan import DATA, catalog, desired, kinds, observed, row

INDEX = Difference("extra", "index", "ops_lookup", repair="DROP INDEX ops_lookup;")
COLUMN = Difference("missing", "column", "notes.color")


def drifted(obs_rows: list[str], files: dict[str, int], diffs: dict[str, tuple[Difference, ...]]
            ) -> Observed:
    obs = observed([row(n, version=files[f"eu/{n}.db"]) for n in obs_rows], files=dict(files))
    return replace(obs, drift=MappingProxyType({str(DATA / rel): d for rel, d in diffs.items()}),
                   declared=MappingProxyType({n: str(DATA / "eu" / f"{n}.db")
                                              for n in ("a", "b")}))


def test_block_reports_drift_and_keeps_the_tenant_from_migrating() -> None:
    obs = drifted(["a", "b"], {"eu/a.db": 2, "eu/b.db": 2}, {"eu/a.db": (INDEX, COLUMN)})
    p = plan(desired({"a": {"region": "eu"}, "b": {"region": "eu"}}), obs, catalog())
    assert kinds(p) == ["drift", "migrate"]
    (d,) = p.problems
    assert d.detail.startswith("extra index ops_lookup; notes.color missing — not migrated "
                               "to v3 (drift: block)")
    assert d.drift == (INDEX, COLUMN) and d.from_version == 2
    assert p.waves == (("b",),)


def test_block_at_the_target_is_a_problem_without_a_change() -> None:
    obs = drifted(["a"], {"eu/a.db": 3}, {"eu/a.db": (INDEX,)})
    p = plan(desired({"a": {"region": "eu"}}), obs, catalog())
    assert kinds(p) == ["drift"] and not p.changes and len(p.problems) == 1
    assert p.actions[0].detail == "extra index ops_lookup"


def test_warn_migrates_and_reports_without_a_problem() -> None:
    obs = drifted(["a"], {"eu/a.db": 2}, {"eu/a.db": (COLUMN,)})
    p = plan(desired({"a": {"region": "eu"}}, drift="warn"), obs, catalog())
    assert kinds(p) == ["migrate", "drift-warn"]
    assert not p.problems
    assert p.actions[1].detail == "notes.color missing — migrated anyway (drift: warn)"


def test_ignore_patterns_leave_matching_objects_out() -> None:
    obs = drifted(["a"], {"eu/a.db": 2}, {"eu/a.db": (INDEX, COLUMN)})
    p = plan(desired({"a": {"region": "eu"}}, drift_ignore=("ops_*",)), obs, catalog())
    assert [a.drift for a in p.problems] == [(COLUMN,)]
    p = plan(desired({"a": {"region": "eu"}}, drift_ignore=("ops_*", "notes")), obs,
             catalog())
    assert kinds(p) == ["migrate"]


def test_an_adopted_file_that_drifts_is_registered_but_not_migrated() -> None:
    obs = drifted([], {"eu/a.db": 1}, {"eu/a.db": (INDEX,)})
    p = plan(desired({"a": {"region": "eu"}}), obs, catalog())
    assert kinds(p) == ["adopt", "drift"]


def test_suspended_tenants_are_not_judged() -> None:
    obs = drifted(["a"], {"eu/a.db": 2}, {"eu/a.db": (INDEX,)})
    p = plan(desired({"a": {"region": "eu", "suspended": True}}), obs, catalog())
    assert Kind.DRIFT not in {a.kind for a in p.actions}
