"""Desired vs actual, tenant by tenant: the data behind ``reconcile status``.

Why: an operator asking "is the fleet in sync?" wants one row per tenant with what
tenants.yaml asks for, what the file and registry say, and what the reconciler would
do about it — derived from the same observe/plan as every pass, never a second opinion.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.desired import Desired
from reconciler.migrations import Catalog
from reconciler.plan import Plan
from reconciler.state import FileState, Observed, Snapshot


@dataclass(frozen=True)
class StatusRow:
    tenant: str
    want_region: str
    want_version: int | None
    region: str
    version: int | None  # the file's user_version (the truth)
    status: str
    pending: str  # what the plan would do, or "" when in sync

    @property
    def in_sync(self) -> bool:
        return not self.pending


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
                    "retired" if row and name in desired.retired and row.status == "orphaned"
                    else row.status if row else "absent"),
            pending=pending,
        ))
    return out


def registry_rows(snapshot: Snapshot, files: Mapping[Path, FileState]) -> list[StatusRow]:
    """Rows from the registry and the files alone, for when tenants.yaml is invalid:
    nothing is wanted (``want_region`` "?") and nothing is planned."""
    out: list[StatusRow] = []
    for name in sorted(snapshot.tenants):
        row = snapshot.tenants[name]
        state = files.get(Path(row.path)) if row.status != "archived" else None
        out.append(StatusRow(tenant=name, want_region="?", want_version=None,
                             region=row.region,
                             version=state.user_version if state is not None else None,
                             status=row.status, pending="desired state invalid"))
    return out
