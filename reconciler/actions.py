"""What a plan is made of: the kinds of action, actions, registry changes, the ``Plan``.

Why a module of its own: the planner (``plan``) decides, and everything after it —
``apply``, ``rollout``, ``render``, ``status``, the cross-host planner — reads its
decisions; they need this vocabulary, not the planner's rules.

Invariants: every value is frozen and does no I/O; each ``Kind`` is either a change
(``CHANGES``: apply does something to a file or the registry), a problem (``PROBLEMS``:
a person must decide) or neither (a note such as ``suspended``, ``retired``, ``wait``),
never both; ``Plan.actions`` keeps the planner's order (reroots first).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from reconciler.schema import Difference
from reconciler.state import Handoff


class Kind(StrEnum):
    CREATE = "create"
    ADOPT = "adopt"
    RESTORE = "restore"
    RELOCATE = "relocate"
    MIGRATE = "migrate"
    ARCHIVE = "archive"
    CORRECT = "correct"
    REROOT = "reroot"  # the registry names a file outside the fleet's directories (fleet.py)
    SUSPEND = "suspend"  # declared suspended: routing answers 503 from now on
    UNSUSPEND = "unsuspend"  # no longer suspended: back in service
    # reports: nothing is done to the tenant's file
    MISSING = "missing"
    ORPHANED = "orphaned"
    DOWNGRADE = "downgrade"
    SUSPENDED = "suspended"
    FAILED = "failed"
    INVALID = "invalid"
    PENDING = "pending"  # would migrate, but its rollout halted (see ``rollout_key``)
    RETIRED = "retired"  # undeclared and acknowledged under ``retired:``: kept, not routed
    DRIFT = "drift"  # schema differs from its version's reference; settings.drift: block
    DRIFT_WARN = "drift-warn"  # the same with settings.drift: warn (migrated anyway)
    NO_BACKUP = "no-backup"  # settings.backup on, and this tenant has no current backup
    # a region agent's cross-host moves (issue 15, see xplan): the source fences and hands
    # off, the destination takes over, the source releases (retires) its copy or cancels
    HANDOFF = "handoff"
    TAKEOVER = "takeover"
    RELEASE = "release"
    CANCEL = "cancel-handoff"
    ABANDON = "abandon-takeover"
    WAIT = "wait"  # reported, not a problem: e.g. cannot know yet whether a peer holds it


CHANGES = (Kind.CREATE, Kind.ADOPT, Kind.RESTORE, Kind.RELOCATE, Kind.MIGRATE, Kind.ARCHIVE,
           Kind.CORRECT, Kind.REROOT, Kind.SUSPEND, Kind.UNSUSPEND, Kind.HANDOFF, Kind.TAKEOVER,
           Kind.RELEASE, Kind.CANCEL, Kind.ABANDON)
PROBLEMS = (Kind.MISSING, Kind.ORPHANED, Kind.DOWNGRADE, Kind.FAILED, Kind.INVALID,
            Kind.PENDING, Kind.DRIFT, Kind.NO_BACKUP)


@dataclass(frozen=True)
class Action:
    kind: Kind
    tenant: str
    region: str | None = None
    from_region: str | None = None
    from_version: int | None = None
    to_version: int | None = None
    path: Path | None = None  # where the tenant's file is to be (or is)
    source: Path | None = None  # where it is now, when that differs
    detail: str = ""
    status: str | None = None  # registry status this action leaves behind
    key: str = ""  # fingerprint of the desired state for failure bookkeeping
    protected: bool = False
    drift: tuple[Difference, ...] = ()  # DRIFT/DRIFT_WARN: how the schema differs
    handoff: Handoff | None = None  # TAKEOVER/RELEASE/CANCEL: the cross-host handoff (xplan)

    @property
    def is_change(self) -> bool:
        return self.kind in CHANGES

    @property
    def is_problem(self) -> bool:
        return self.kind in PROBLEMS


@dataclass(frozen=True)
class RegistryChange:
    """Bookkeeping the registry needs: a global setting or a routed domain."""

    table: str  # "settings" | "domains" | "fleet" (key "copied"/"moved": where from → here)
    key: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Plan:
    revision: str
    target: int
    tenant_count: int
    actions: tuple[Action, ...]
    registry: tuple[RegistryChange, ...] = ()
    waves: tuple[tuple[str, ...], ...] = ()
    notes: tuple[str, ...] = field(default=())
    declared: tuple[str, ...] = ()
    rollout_key: str = ""  # set when tenants migrate (or wait on a halted rollout)

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.is_change)

    @property
    def problems(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.is_problem)

    @property
    def is_empty(self) -> bool:
        """Nothing to change (problems may remain: they need a human)."""
        return not self.changes and not self.registry

    def count(self, kind: Kind) -> int:
        return Counter(a.kind for a in self.actions)[kind]

    def for_tenant(self, name: str) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.tenant == name)
