"""How ``status`` and ``route`` show a fleet spread over several hosts (issue 15): the
regions with their agents and view ages, and a tenant that lives in another region.

Why a module of its own: the words and JSON shapes of the multi-host view are one
concept, used by two commands; ``render`` holds the single-host ones. Pure: values in,
lines or JSON-ready dictionaries out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reconciler.peers import RegionStatus
from reconciler.routing import TenantElsewhere


def _age(age: float | None) -> str:
    return "missing" if age is None else f"{age:.0f}s old"


def region_lines(regions: Sequence[RegionStatus], stale_after: float) -> list[str]:
    """``regions:`` then one aligned line per region: ``here`` or the view's age
    (``STALE`` beyond ``stale_after``), its agent, tenants and endpoint."""
    rows = []
    for r in regions:
        if r.here:
            view = "here"
        else:
            view = f"view {_age(r.age)}" + (f" — STALE (> {stale_after:g}s)" if r.stale
                                            and r.age is not None else "")
        extra = [f"agent {r.agent}" if r.agent else "agent unknown"]
        if r.tenants is not None:
            extra.append(f"{r.tenants} tenant{'s' if r.tenants != 1 else ''}")
        if r.endpoint:
            extra.append(r.endpoint)
        if r.problem and r.age is None:
            extra.append(r.problem)
        rows.append((r.name, view, ", ".join(extra)))
    width = [max((len(row[i]) for row in rows), default=0) for i in range(2)]
    return ["regions:"] + [f"  {a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]


def regions_json(regions: Sequence[RegionStatus]) -> list[dict[str, Any]]:
    return [r.__dict__.copy() for r in regions]


def elsewhere_lines(exc: TenantElsewhere) -> list[str]:
    """``route HOST`` for a tenant another region's host holds."""
    t = exc.tenant
    generation = "" if exc.generation is None else f"generation {exc.generation} "
    return [f"tenant   {t.name}", f"region   {exc.region} (another host)",
            f"endpoint {exc.endpoint or '(none declared: regions.' + exc.region + '.endpoint)'}",
            f"status   {t.status} ({generation}as registered there)",
            f"view     {_age(exc.age)} (this host's copy of {exc.region}'s registry)"]


def elsewhere_json(exc: TenantElsewhere) -> dict[str, Any]:
    t = exc.tenant
    return {"tenant": t.name, "region": exc.region, "endpoint": exc.endpoint,
            "status": t.status, "schema_version": t.schema_version,
            "generation": exc.generation, "here": False,
            "view_age": exc.age, "available": False,
            "reason": f"lives in region {exc.region}"}
