"""Desired vs actual, tenant by tenant: the data behind ``reconcile status``.

Why: an operator asking "is the fleet in sync?" wants one row per tenant with what
tenants.yaml asks for, what the file and registry say, and what the reconciler would
do about it — derived from the same observe/plan as every pass, never a second opinion.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.actions import CHANGES, Kind, Plan
from reconciler.desired import Desired
from reconciler.driftpolicy import drift_of
from reconciler.migrations import Catalog
from reconciler.schema import summary
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
    pinned: bool = False  # tenants.yaml pins its schema (``schema: N``)
    problem: str = ""  # what needs a person ("registered at v3, file … is gone"), or ""
    changing: bool = False  # the next pass changes it (or waits on a halted rollout)
    kinds: tuple[str, ...] = ()  # the plan's action kinds for it (``Kind`` values)
    drift: str = ""  # schema drift summary (``schema.summary``), "" when none
    # backups (issue 14; None when settings.backup is off or the tenant is not replicated)
    backup_txid: int | None = None  # Litestream's txid of the file
    backup_synced_at: float | None = None  # epoch seconds of its last successful sync
    backup_lag: float | None = None  # seconds the replica is behind (None: unknown)

    @property
    def in_sync(self) -> bool:
        return not self.pending and not self.drift

    @property
    def needs_person(self) -> bool:
        return bool(self.problem)


def rows(desired: Desired, observed: Observed, plan: Plan, catalog: Catalog) -> list[StatusRow]:
    out: list[StatusRow] = []
    names = sorted(set(desired.tenants) | set(observed.registry.tenants))
    for name in names:
        spec = desired.tenants.get(name)
        row = observed.registry.tenants.get(name)
        file_version = None
        if row is not None and row.status != "archived":
            file_version = observed.file(Path(row.path)).user_version
        # a region agent's wait (issue 15) is neither change nor problem, but not in sync
        actions = [a for a in plan.for_tenant(name)
                   if a.is_change or a.is_problem or a.kind is Kind.WAIT]
        pending = "; ".join(a.kind.value for a in actions)
        problems = [a for a in actions if a.is_problem and a.kind is not Kind.PENDING]
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
            pinned=spec is not None and spec.schema is not None,
            problem="; ".join(a.detail or a.kind.value for a in problems),
            changing=any(a.kind in CHANGES or a.kind is Kind.PENDING for a in actions),
            kinds=tuple(a.kind.value for a in actions),
            drift=summary(drift_of(desired, observed, name, row))
            if spec is not None and not spec.suspended else "",
            **_backup_fields(observed, name),
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


# The fleet in numbers, in the order ``reconcile status`` prints them: (label, which rows).
# A new observed fact that needs counting (drift, backups, …) adds one entry here.
COUNTS: tuple[tuple[str, Callable[[StatusRow], bool]], ...] = (
    ("in sync", lambda r: r.in_sync),
    ("pending", lambda r: r.changing),
    ("pinned", lambda r: r.pinned),
    ("failed", lambda r: r.status == "failed" or "failed" in r.kinds),
    ("missing", lambda r: r.status == "missing" or "missing" in r.kinds),
    ("orphaned", lambda r: r.status == "orphaned" or "orphaned" in r.kinds),
    ("suspended", lambda r: r.status == "suspended"),
    ("drifted", lambda r: bool(r.drift)),
    ("waiting", lambda r: "wait" in r.kinds),  # region agents: e.g. for another's hand-off
)


@dataclass(frozen=True)
class FleetCounts:
    """``reconcile status``'s opening numbers.

    ``by_region``: per region (where the tenant is, else where it is wanted), how many
    tenants' files are at each version (``None``: no file yet, or none readable).
    ``counts``: ``COUNTS``' labels with their number of tenants, in that order."""

    total: int
    by_region: tuple[tuple[str, tuple[tuple[int | None, int], ...]], ...]
    versions: tuple[int | None, ...]  # every version seen, ascending, ``None`` last
    counts: tuple[tuple[str, int], ...]

    def count(self, label: str) -> int:
        return dict(self.counts)[label]


def fleet_counts(rows_: Sequence[StatusRow]) -> FleetCounts:
    per: dict[str, Counter[int | None]] = {}
    for r in rows_:
        region = r.region if r.region != "-" else r.want_region
        per.setdefault(region, Counter())[r.version] += 1
    seen = {v for c in per.values() for v in c}
    versions = tuple(sorted(v for v in seen if v is not None)) + ((None,) if None in seen else ())
    return FleetCounts(
        total=len(rows_),
        by_region=tuple((region, tuple((v, per[region][v]) for v in versions))
                        for region in sorted(per)),
        versions=versions,
        counts=tuple((label, sum(1 for r in rows_ if which(r))) for label, which in COUNTS),
    )


def counts_json(fleet: FleetCounts) -> dict[str, object]:
    """``{"total": 400, "regions": {"eu": {"v3": 199, "none": 1}}, "counts": {"in sync":
    389, "pending": 10, …}}`` — versions a region has no tenant at are left out."""
    return {"total": fleet.total,
            "regions": {region: {("none" if v is None else f"v{v}"): n for v, n in per if n}
                        for region, per in fleet.by_region},
            "counts": dict(fleet.counts)}


@dataclass(frozen=True)
class VersionCount:
    """``status --schema``: tenants at one version and how many match its reference."""

    version: int
    tenants: int
    matching: int
    drifted: tuple[str, ...]


def schema_counts(rows_: list[StatusRow], checked: bool) -> list[VersionCount]:
    """Per file version (ascending): tenants there, and how many match the reference
    (``checked`` False — ``settings.drift: ignore`` — leaves ``matching`` at 0)."""
    by: dict[int, list[StatusRow]] = {}
    for r in rows_:
        if r.version is not None and r.status != "suspended":
            by.setdefault(r.version, []).append(r)
    return [VersionCount(v, len(rs), sum(not r.drift for r in rs) if checked else 0,
                         tuple(r.tenant for r in rs if r.drift))
            for v, rs in sorted(by.items())]


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
