"""Drift policy in the plan: what ``settings.drift`` and ``drift_ignore`` make of a
tenant's schema drift.

Why a module of its own: drift is found by ``observe`` (``schema``, ``drift``) and
reported by ``driftreport`` and ``status``; which differences count, and whether a
drifted tenant is still migrated, is one policy that the planner and those reports
must apply the same way.

Invariants: pure (no I/O; it reads only the ``Observed`` value); a difference whose
object name matches a ``drift_ignore`` pattern never counts; under ``block`` a drifted
tenant gets no ``migrate`` action, under ``warn`` it keeps it; either way one
``drift``/``drift-warn`` action says how the schema differs.
"""

from __future__ import annotations

from dataclasses import replace
from fnmatch import fnmatchcase
from pathlib import Path

from reconciler.actions import Action, Kind
from reconciler.desired import Desired, TenantSpec
from reconciler.schema import Difference
from reconciler.schema import summary as drift_summary
from reconciler.state import Observed, TenantRow


def drift_of(desired: Desired, observed: Observed, name: str,
             row: TenantRow | None) -> tuple[Difference, ...]:
    """The tenant's schema drift as policy sees it: differences from the reference for
    its file's version whose object names match no ``settings.drift_ignore`` pattern
    (a column matches as ``table.column`` or by its table's name)."""
    path = (row.path if row is not None and row.status != "archived"
            else observed.declared.get(name))
    diffs = observed.drift.get(path, ()) if path is not None else ()
    ignore = desired.settings.drift_ignore
    if not diffs or not ignore:
        return diffs
    return tuple(d for d in diffs if not any(
        fnmatchcase(d.name, p) or fnmatchcase(d.name.split(".", 1)[0], p) for p in ignore))


def with_drift(planned: list[Action], desired: Desired, observed: Observed, spec: TenantSpec,
               row: TenantRow | None) -> list[Action]:
    """Drift policy (``settings.drift``): ``block`` — a drifted tenant is not migrated
    (its next migration was never tested against its real shape) and is a problem;
    ``warn`` — migrated anyway, and reported."""
    diffs = drift_of(desired, observed, spec.name, row)
    if not diffs:
        return planned
    path = row.path if row is not None and row.status != "archived" else \
        observed.declared[spec.name]
    version = observed.version_at(path)
    text = drift_summary(diffs)
    migrate = next((a for a in planned if a.kind is Kind.MIGRATE), None)
    base = Action(Kind.DRIFT, spec.name, spec.region, from_version=version,
                  to_version=migrate.to_version if migrate else version, path=Path(path),
                  drift=diffs, protected=spec.protected)
    if desired.settings.drift == "warn":
        tail = " — migrated anyway (drift: warn)" if migrate else ""
        return [*planned, replace(base, kind=Kind.DRIFT_WARN, detail=text + tail)]
    tail = (f" — not migrated to v{migrate.to_version} (drift: block); repair it (`reconcile "
            f"drift {spec.name}`) or set settings.drift: warn") if migrate else ""
    return [*[a for a in planned if a.kind is not Kind.MIGRATE],
            replace(base, detail=text + tail)]
