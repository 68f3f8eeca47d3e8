"""Value types of the fleet's state: what the registry holds and what observation saw.

Why a module of its own: the planner is a pure function (DESIGN §7) and must import
only values, never a module that does I/O. ``registry`` (central.db) and ``observe``
(the files) build these values; ``plan``, ``status`` and the renderers read them.

Invariants: every type here is immutable once built (frozen dataclasses, named tuples,
read-only mappings); nothing here opens a file or a database.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from reconciler.backup import BackupState
from reconciler.schema import Difference

STATUSES = ("active", "pending", "migrating", "relocating", "suspended", "failed",
            "missing", "orphaned", "archived")


class TenantRow(NamedTuple):
    """One ``tenants`` row. A named tuple, not a dataclass: the snapshot builds one per
    tenant per pass, and a tuple is built from SQLite's row in one C call (0.1 µs, a
    frozen dataclass 0.8 µs) — at 100k tenants that is most of reading the registry."""

    name: str
    region: str
    path: str
    schema_version: int
    status: str
    failure: str | None = None
    failed_key: str | None = None
    failures: int = 0
    retry_at: float | None = None
    protected: bool = False
    # (created_at and updated_at are in the table for people; planning never needs them)


@dataclass(frozen=True)
class JournalRow:
    tenant: str
    action: str
    phase: str
    source: str | None
    dest: str | None
    temp: str | None
    started_at: str
    detail: str | None

    def details(self) -> dict[str, Any]:
        """``detail`` parsed: what the operation journaled beside its phase ({} if none)."""
        return dict(json.loads(self.detail)) if self.detail else {}


@dataclass(frozen=True)
class Snapshot:
    """Everything plan() needs from the registry, read in one go."""

    exists: bool
    tenants: Mapping[str, TenantRow]
    domains: Mapping[str, str]
    settings: Mapping[str, str]
    migrations: Mapping[int, tuple[str, str]]  # version → (name, sha256)
    journal: Mapping[str, JournalRow]
    rollout: Mapping[str, str]  # key → state
    # migrations recorded before their first use that no tenant was confirmed to commit
    unconfirmed: frozenset[int] = frozenset()
    # the ``fleet`` table (reconciler/fleet.py): id, central, dirs; {} before it is recorded
    fleet: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # drift bookkeeping (``schema_keys``, ``schema_checks``): path text → the schema key
    # each file had when last compared with its reference (a plain dict, never mutated:
    # comparing it with the observed keys is one C call); path text → the differences
    # found (JSON), drifted files only
    schema_keys: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    drift: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @staticmethod
    def empty() -> Snapshot:
        e: Mapping[Any, Any] = MappingProxyType({})
        return Snapshot(False, e, e, e, e, e, e, frozenset(), e)



class AgentRow(NamedTuple):
    """The ``agent`` row of a registry (issue 15): which agent writes it. ``region`` None:
    the agent of every region (a single host); ``heartbeat_at``: unix seconds, refreshed
    about every second while the agent runs."""

    region: str | None
    host: str | None
    revision: str | None
    heartbeat_at: float | None

    def name(self) -> str:
        """``<region>@<host>`` (``*@<host>`` for the agent of every region)."""
        return f"{self.region or '*'}@{self.host or '?'}"


class RegionRow(NamedTuple):
    """One ``regions`` row: a declared region as this host sees it. ``registry``: the
    absolute path of the followed copy of its registry (None for this host's own)."""

    name: str
    endpoint: str | None
    local: bool
    registry: str | None


@dataclass(frozen=True, slots=True)
class PeerTenant:
    """A tenant as another region's registry holds it (read from a followed copy)."""

    name: str
    region: str
    path: str
    schema_version: int
    status: str
    generation: int
    seq: int = 0  # the registry's ``agent.seq`` when the row was registered
    taken_digest: str | None = None  # the handoff's digest, when a takeover registered it


@dataclass(frozen=True, slots=True)
class Handoff:
    """A ``handoffs`` row: ``tenant`` handed to ``to_region`` through the replica at
    ``replica_url``, final position ``txid``, with the schema version, content digest
    and generation the destination must register."""

    tenant: str
    to_region: str
    replica_url: str
    txid: int
    schema_version: int
    digest: str
    generation: int
    # the source registry's ``agent.seq`` when the row was written (0 when not read from
    # a registry): not part of what is handed off, so never compared
    seq: int = field(default=0, compare=False)


_NO_TENANTS: Mapping[str, PeerTenant] = MappingProxyType({})
_NO_TEXT: Mapping[str, str] = MappingProxyType({})
_NO_HANDOFFS: Mapping[str, Handoff] = MappingProxyType({})


@dataclass(frozen=True)
class PeerView:
    """What this host knows of another region from its followed registry copy.

    ``age``: seconds since that region's agent last refreshed its heartbeat, as seen in
    the copy (None: no readable copy — nothing can be claimed about that region);
    ``revision``: the tenants.yaml revision its agent last applied; ``host``: where its
    agent runs; ``tenants``: name → row; ``domains``: domain → tenant; ``handoffs``:
    tenant → handoff row; ``seq``: the copy's ``agent.seq`` (see ``confirmed``). Empty
    mappings when the copy is missing."""

    region: str
    endpoint: str | None
    age: float | None
    revision: str | None = None
    tenants: Mapping[str, PeerTenant] = field(default_factory=lambda: _NO_TENANTS)
    domains: Mapping[str, str] = field(default_factory=lambda: _NO_TEXT)
    handoffs: Mapping[str, Handoff] = field(default_factory=lambda: _NO_HANDOFFS)
    host: str | None = None
    problem: str | None = None  # why there is no usable copy (age None), for people
    seq: int = 0

    def fresh(self, stale_after: float) -> bool:
        """Whether the view may be trusted: read, and at most ``stale_after`` s old."""
        return self.age is not None and self.age <= stale_after

    def confirmed(self, seq: int) -> bool:
        """Whether a row of this copy written at ``seq`` (``PeerTenant.seq``,
        ``Handoff.seq``) is certainly committed in that region's registry: the copy
        shows a later commit of it. A row without one may still vanish there (its writer
        killed before SQLite published it; ``registry.Registry.confirm``)."""
        return seq < self.seq


@dataclass(frozen=True)
class FileState:
    path: Path
    exists: bool
    user_version: int | None = None  # None when missing or unreadable
    error: str | None = None  # why it is not a usable SQLite database
    wal: bool = False

    @property
    def usable(self) -> bool:
        return self.exists and self.error is None and self.user_version is not None


# what _read_many keeps per file (see FileStates)
Read = FileState | int | tuple[int, bool]


@dataclass(frozen=True)
class RegionState:
    name: str
    path: Path
    problem: str | None = None


class FileStates(Mapping[Path, FileState]):
    """The observed files, keyed by ``Path`` like any mapping, stored by path text.

    Immutable once built. A usable file is kept as its bare ``user_version`` (read from
    the header) or as ``(user_version, wal)`` (read by SQLite), and turned into a
    ``FileState`` on access."""

    __slots__ = ("_by_text",)

    def __init__(self, by_text: Mapping[str, Read]) -> None:
        self._by_text = by_text

    def __getitem__(self, key: Path) -> FileState:
        text = os.fspath(key)
        v = self._by_text[text]
        if isinstance(v, FileState):
            return v
        path = key if isinstance(key, Path) else Path(text)
        if isinstance(v, tuple):
            return FileState(path, exists=True, user_version=v[0], wal=v[1])
        return FileState(path, exists=True, user_version=v)

    def __iter__(self) -> Iterator[Path]:
        return (Path(t) for t in self._by_text)

    def __len__(self) -> int:
        return len(self._by_text)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, os.PathLike)) and os.fspath(key) in self._by_text

    def version_of(self, text: str) -> int | None:
        """``user_version`` of a usable file, by its path text (the hot path's lookup)."""
        v = self._by_text.get(text)
        if isinstance(v, FileState):
            return v.user_version if v.usable else None
        return v[0] if isinstance(v, tuple) else v


@dataclass(frozen=True)
class Fence:
    """The directories (normalised absolute path texts) a pass may touch files in: the
    region directories, ``_archive`` and ``_retired`` its tenants.yaml declares."""

    dirs: frozenset[str]
    config: str = "tenants.yaml"

    def holds(self, path: str | os.PathLike[str]) -> bool:
        """Is ``path`` a file directly inside one of the declared directories?"""
        return os.path.dirname(os.path.normpath(os.fspath(path))) in self.dirs


@dataclass(frozen=True)
class FleetState:
    """Where the registry is against where it was recorded (see reconciler/fleet.py)."""

    central: str  # where the registry is now (normalised absolute path text)
    fence: Fence = field(default_factory=lambda: Fence(frozenset()))
    recorded: str | None = None  # where it was when last written; None: never recorded
    origin: str | None = None  # "copied" | "moved" | None (where it was recorded)
    shared: tuple[str, ...] = ()  # declared directories a copy shares with its original
    # tenant → where this fleet keeps the file of a row registered outside the fence
    rerooted: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    unplaced: tuple[str, ...] = ()  # rows outside the fence whose region is not declared
    # tenant → its unfinished operation with every path moved with the fleet's directories
    journals: Mapping[str, JournalRow] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Observed:
    registry: Snapshot
    files: Mapping[Path, FileState]
    regions: Mapping[str, RegionState]
    archives: Mapping[str, tuple[Path, ...]]  # tenant → archived copies, oldest first
    now: float
    # declared tenant → the text of the path its file belongs at (== the text of
    # desired.tenant_path), so the planner's steady-state check needs no Path at all
    declared: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    fleet: FleetState | None = None  # None: not observed (unit tests of other rules)
    # schema drift (see ``drift``): path text → differences from the reference for the
    # file's version, drifted files only (empty when settings.drift is ignore)
    drift: Mapping[str, tuple[Difference, ...]] = field(
        default_factory=lambda: MappingProxyType({}))
    drift_checked: tuple[Any, ...] = ()  # drift.Check values compared this pass
    # path text → schema key to remember after this pass (None: nothing to remember anew)
    drift_remember: Mapping[str, bytes] | None = None
    # tenant → its backup as Litestream reports it; None when settings.backup is off
    backups: Mapping[str, BackupState] | None = None
    # region → what this host knows of it from its followed registry copy (issue 15);
    # None on a single host serving every region
    peers: Mapping[str, PeerView] | None = None

    def file(self, path: Path | str) -> FileState:
        p = path if isinstance(path, Path) else Path(path)
        return self.files.get(p) or FileState(p, exists=False)

    def version_at(self, text: str) -> int | None:
        """``user_version`` of the usable file at path ``text``; None if none is there."""
        if isinstance(self.files, FileStates):
            return self.files.version_of(text)
        found = self.files.get(Path(text))
        return found.user_version if found is not None and found.usable else None
