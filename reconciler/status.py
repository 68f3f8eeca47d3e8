"""Desired vs actual, tenant by tenant: the data behind ``reconcile status``.

Why: an operator asking "is the fleet in sync?" wants one row per tenant with what
tenants.yaml asks for, what the file and registry say, and what the reconciler would
do about it — derived from the same observe/plan as every pass, never a second opinion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.desired import Desired
from reconciler.migrations import Catalog
from reconciler.plan import Plan
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
    # backups (issue 14; None when settings.backup is off or the tenant is not replicated)
    backup_txid: int | None = None  # Litestream's txid of the file
    backup_synced_at: float | None = None  # epoch seconds of its last successful sync
    backup_lag: float | None = None  # seconds the replica is behind (None: unknown)

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
                    row.status if row else "absent"),
            pending=pending,
            **_backup_fields(observed, name),
        ))
    return out


def _backup_fields(observed: Observed, name: str) -> dict[str, Any]:
    b = observed.backups.get(name) if observed.backups is not None else None
    if b is None:
        return {}
    return {"backup_txid": b.txid, "backup_synced_at": b.synced_at, "backup_lag": b.lag}


@dataclass(frozen=True)
class BackupSummary:
    """The fleet's backups in one line: tenants replicated, lagging beyond the
    threshold (seconds), and without any confirmed backup."""

    replicated: int
    lagging: int
    without: int
    threshold: float
    max_lag: float | None

    def line(self) -> str:
        worst = f", worst lag {self.max_lag:.1f}s" if self.max_lag is not None else ""
        return (f"backups: {self.replicated} replicated, {self.lagging} lagging more than "
                f"{self.threshold:g}s, {self.without} without a backup{worst}")


def backup_summary(desired: Desired, observed: Observed) -> BackupSummary | None:
    if observed.backups is None or desired.settings.backup is None:
        return None
    threshold = desired.settings.backup.threshold
    lags = [b.lag for b in observed.backups.values() if b.lag is not None]
    return BackupSummary(
        replicated=sum(1 for b in observed.backups.values() if b.good(threshold)),
        lagging=sum(1 for b in observed.backups.values()
                    if b.lag is not None and b.lag > threshold),
        without=sum(1 for b in observed.backups.values() if b.lag is None),
        threshold=threshold, max_lag=max(lags) if lags else None)
