"""Desired vs actual, tenant by tenant: the data behind ``reconcile status``.

Why: an operator asking "is the fleet in sync?" wants one row per tenant with what
tenants.yaml asks for, what the file and registry say, and what the reconciler would
do about it — derived from the same observe/plan as every pass, never a second opinion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconciler.desired import Desired
from reconciler.migrations import Catalog
from reconciler.plan import Plan, drift_of
from reconciler.schema import summary
from reconciler.state import Observed


@dataclass(frozen=True)
class StatusRow:
    tenant: str
    want_region: str
    want_version: int | None
    region: str
    version: int | None  # the file's user_version (the truth)
    status: str
    pending: str  # what the plan would do, or "" when in sync
    drift: str = ""  # schema drift summary (``schema.summary``), "" when none

    @property
    def in_sync(self) -> bool:
        return not self.pending and not self.drift


def rows(desired: Desired, observed: Observed, plan: Plan, catalog: Catalog) -> list[StatusRow]:
    out: list[StatusRow] = []
    names = sorted(set(desired.tenants) | set(observed.registry.tenants))
    for name in names:
        spec = desired.tenants.get(name)
        row = observed.registry.tenants.get(name)
        file_version = None
        if row is not None and row.status != "archived":
            file_version = observed.file(Path(row.path)).user_version
        actions = [a for a in plan.for_tenant(name) if a.is_change or a.is_problem]
        pending = "; ".join(a.kind.value for a in actions)
        out.append(StatusRow(
            tenant=name,
            want_region=spec.region if spec else "-",
            want_version=desired.target_version(spec, catalog.latest) if spec else None,
            region=row.region if row else "-",
            version=file_version,
            status=("suspended" if spec and spec.suspended and row is None else
                    row.status if row else "absent"),
            pending=pending,
            drift=summary(drift_of(desired, observed, name, row))
            if spec is not None and not spec.suspended else "",
        ))
    return out


@dataclass(frozen=True)
class VersionCount:
    """``status --schema``: tenants at one version and how many match its reference."""

    version: int
    tenants: int
    matching: int
    drifted: tuple[str, ...]


def schema_counts(rows: list[StatusRow], checked: bool) -> list[VersionCount]:
    """Per file version (ascending): tenants there, and how many match the reference
    (``checked`` False — ``settings.drift: ignore`` — leaves ``matching`` at 0)."""
    by: dict[int, list[StatusRow]] = {}
    for r in rows:
        if r.version is not None and r.status != "suspended":
            by.setdefault(r.version, []).append(r)
    return [VersionCount(v, len(rs), sum(not r.drift for r in rs) if checked else 0,
                         tuple(r.tenant for r in rs if r.drift))
            for v, rs in sorted(by.items())]
