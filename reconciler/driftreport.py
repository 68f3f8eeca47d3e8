"""``reconcile drift``: every tenant's schema against the reference for its version.

Why: the plan shows a one-line summary per drifted tenant; an operator repairing one
needs the whole difference, and may want SQL that would repair it (shown for a person
to read and run — never run here). ``--all`` re-compares every file, ignoring what the
registry remembers, in parallel (``rollout.parallel`` threads) with a progress line.

Read-only like ``plan``: the registry and tenant files are opened read-only, and what
was compared is not remembered (the next ``apply`` or daemon pass does that).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from reconciler import engine
from reconciler.driftpolicy import drift_of
from reconciler.errors import InvalidInput, Problem
from reconciler.observe import observe
from reconciler.registry import Registry, Snapshot
from reconciler.schema import Difference, summary


@dataclass(frozen=True)
class TenantDrift:
    tenant: str
    region: str
    path: str
    version: int | None
    differences: tuple[Difference, ...]  # after settings.drift_ignore
    ignored: int  # differences left out by settings.drift_ignore

    @property
    def drifted(self) -> bool:
        return bool(self.differences)


def report(inputs: engine.Inputs, names: Sequence[str], recheck: bool,
           progress: Callable[[int, int], None] | None = None) -> list[TenantDrift]:
    """Drift of the named tenants (all declared, not suspended ones when none are
    named), in name order. Raises ``InvalidInput`` for a name tenants.yaml lacks."""
    desired = inputs.desired
    unknown = [n for n in names if n not in desired.tenants]
    if unknown:
        raise InvalidInput([Problem(str(inputs.config), None, None,
                                    f"tenant {n!r} is not declared in tenants.yaml",
                                    "name a declared tenant, or none for every tenant")
                            for n in unknown])
    if desired.settings.drift == "ignore":  # asked explicitly: check anyway
        desired = replace(desired, settings=replace(desired.settings, drift="block"))
    with engine.collector_paused():
        snapshot = Registry.read(desired.settings.central, Registry.snapshot,
                                 Snapshot.empty())
        engine.verify_catalog(inputs, snapshot)
        observed = observe(desired, snapshot, mode="ro", catalog=inputs.catalog, recheck=recheck,
                           progress=progress)
    out = []
    for name in names or sorted(desired.tenants):
        spec = desired.tenants[name]
        row = snapshot.tenants.get(name)
        path = (row.path if row is not None and row.status != "archived"
                else observed.declared[name])
        version = observed.version_at(path)
        if spec.suspended or version is None:
            continue
        kept = drift_of(desired, observed, name, row)
        out.append(TenantDrift(name, spec.region, path, version, kept,
                               len(observed.drift.get(path, ())) - len(kept)))
    return out


def lines(found: list[TenantDrift]) -> list[str]:
    """The human report: one ``! drift`` line per drifted tenant, then each difference
    with SQL that would repair it (for a person to read), then a summary line."""
    out: list[str] = []
    for t in found:
        if not t.drifted:
            continue
        out.append(f"! drift {t.tenant} v{t.version}: {summary(t.differences)}")
        for d in t.differences:
            out.append(f"    {d.summary()}" + (f" ({d.detail})" if d.detail and
                                                 d.change != "changed" else ""))
            if d.repair:
                out.append(f"      repair: {d.repair}")
    drifted = sum(t.drifted for t in found)
    ignored = sum(t.ignored for t in found)
    out.append(f"Drift: {drifted} of {len(found)} tenant{'s' if len(found) != 1 else ''} "
               "differ from the reference schema of their version"
               + (f"; {ignored} difference{'s' if ignored != 1 else ''} ignored by "
                  "settings.drift_ignore" if ignored else "")
               + (". The repair SQL is a suggestion for a person: reconcile never runs it."
                  if drifted else "."))
    return out


def as_json(found: list[TenantDrift]) -> dict[str, object]:
    return {"drifted": sum(t.drifted for t in found), "checked": len(found),
            "tenants": [{"tenant": t.tenant, "region": t.region, "path": t.path,
                         "version": t.version, "drift": t.drifted,
                         "ignored": t.ignored,
                         "differences": [d.as_json() for d in t.differences]}
                        for t in found]}
