"""Its own fleet only (DESIGN §5): which files a pass may touch, and whether this
registry still is where it was.

Why: ``tenants.path`` is absolute (applications open it as it is, DESIGN §4), so a
registry copied with its fleet (``cp -a prod staging``) or moved (``mv``, a remount
elsewhere, a restore from backup to another disk) still names the original's files.
Acting on those names would move or migrate another fleet's data. Two guards close that:

* **The fence.** The only directories a pass may read, write or move files in are the
  ones its own ``tenants.yaml`` declares: every region directory, ``<data_dir>/_archive``,
  ``<data_dir>/_retired``, ``<data_dir>/_restore`` and ``<data_dir>/_follow``. Every
  file the reconciler manages sits directly in one of them (tenant files, their temp
  copies and snapshots, archives, retired copies, followed registry copies), so a path
  is inside exactly when its parent directory is one of them — judged on the normalised
  path text, with no I/O. A registered path outside the fence is never opened:
  observation reads the tenant's file where this fleet keeps it instead
  (``<region dir>/<name>.db``, ``_archive/<file name>``), and the plan *reroots* the
  registry to it (``* reroot eu: /old/data/eu → /new/data/eu``) — data is not copied, so
  a moved fleet converges without copying anything twice. Each action checks its paths
  against the fence again before it touches a file (``check``).
* **The identity.** The registry records (table ``fleet``) a random id, where
  ``central.db`` was when last written and the fence's directories then. Found
  elsewhere, the registry was *moved* (nothing is at the recorded place any more, or it
  is the same file under another name) or *copied* (another registry is still there).
  A copy becomes a fleet of its own (a new id) — unless it declares a directory the
  original declares too (an absolute region path kept by the copy): the two would share
  tenant files, so every pass in the copy is refused until it gets its own directory.
  The directories are recorded by role (``region:<name>``, ``archive``, ``retired``), so
  an unfinished operation journaled before a copy or move is carried over to the same
  roles here (``translated``) and resumed on this fleet's own files.

This module also carries the two out: ``record`` (first thing in every pass: the
identity, one event when the registry was copied or moved here) and ``reroot`` (the
action: a registry update, no file touched).

Invariants: nothing here writes outside the registry; ``observe_fleet`` only stats
the recorded registry path (to tell a copy from a move), it never opens it. Known limit:
a registry copied before any pass recorded its identity (written by a reconciler older
than the ``fleet`` table) cannot be told from its original; the fence still keeps it to
its own directories, but a copy that keeps an absolute region path of the original
shares that directory without being refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from reconciler.actions import Action, Plan
from reconciler.context import OK, Context, Outcome
from reconciler.context import record as ctx_record
from reconciler.desired import Desired
from reconciler.errors import PermanentError
from reconciler.registry import Registry
from reconciler.state import Fence, FleetState, JournalRow, Snapshot, TenantRow

COPIED, MOVED = "copied", "moved"


def check(desired: Desired, path: str | os.PathLike[str] | None, what: str) -> None:
    """Raise ``PermanentError`` unless ``path`` (None: nothing to check) lies in
    ``desired``'s fence: the last guard before an action touches a file."""
    the_fence = fence(desired)
    if path is not None and not the_fence.holds(path):
        raise PermanentError(
            f"{what} {os.fspath(path)} is outside the directories {the_fence.config} "
            f"declares ({', '.join(sorted(the_fence.dirs))}) — not touched; a pass acts on "
            "its own fleet's files only (was the registry copied or moved? `reconcile "
            "--dry-run` shows the reroot)")


def check_journal(desired: Desired, journal: JournalRow | None) -> None:
    """``check`` every path an unfinished operation names (before it is resumed)."""
    if journal is not None:
        for path in (journal.source, journal.dest, journal.temp,
                     journal.details().get("retired_path")):
            check(desired, path, f"{journal.tenant}'s unfinished {journal.action} names")


def fence(desired: Desired) -> Fence:
    """The fence of ``desired``: region directories, ``_archive``, ``_retired`` and
    ``_restore`` (a point-in-time restore's staged copy) and ``_follow`` (followed copies
    of other regions' registries, issue 15)."""
    s = desired.settings
    dirs = {os.path.normpath(os.fspath(r.path)) for r in desired.regions.values()}
    dirs.update(os.path.normpath(os.fspath(d))
                for d in (s.archive_dir, s.retired_dir, s.restore_dir, s.follow_dir))
    return Fence(frozenset(dirs), desired.source.name)


def home(desired: Desired, row: TenantRow) -> str | None:
    """Where this fleet keeps ``row``'s file: ``<region dir>/<name>.db`` (an archived row:
    ``_archive/<its file name>``); None when its region is no longer declared."""
    if row.status == "archived":
        return os.fspath(desired.settings.archive_dir / os.path.basename(row.path))
    region = desired.regions.get(row.region)
    if region is None:
        return None
    return os.fspath(region.path / f"{row.name}.db")


def roots(desired: Desired) -> dict[str, str]:
    """Each fence directory by its role: ``region:<name>``, ``archive``, ``retired``."""
    s = desired.settings
    out = {f"region:{name}": os.path.normpath(os.fspath(r.path))
           for name, r in desired.regions.items()}
    out["archive"] = os.path.normpath(os.fspath(s.archive_dir))
    out["retired"] = os.path.normpath(os.fspath(s.retired_dir))
    return out


def dir_map(desired: Desired, recorded: Mapping[str, str]) -> dict[str, str]:
    """Recorded directory → the directory of the same role now (only those that moved)."""
    then = json.loads(recorded.get("roots", "{}"))
    now = roots(desired)
    return {old: now[role] for role, old in then.items() if role in now and now[role] != old}


def translated(journal: JournalRow, moved: Mapping[str, str], the_fence: Fence
               ) -> JournalRow | None:
    """``journal`` with every path moved into the fence by ``moved`` (directory → its
    new place); None when a path stays outside (that operation cannot be resumed here)."""
    def one(path: str | None) -> str | None:
        if path is None or the_fence.holds(path):
            return path
        parent, name = os.path.split(os.path.normpath(path))
        return os.path.join(moved[parent], name) if parent in moved else None

    detail = journal.details()
    paths = (journal.source, journal.dest, journal.temp, detail.get("retired_path"))
    new = [one(p) for p in paths]
    if any(p is not None and n is None for p, n in zip(paths, new, strict=True)):
        return None
    if "retired_path" in detail:
        detail["retired_path"] = new[3]
    return dataclasses.replace(journal, source=new[0], dest=new[1], temp=new[2],
                               detail=json.dumps(detail) if journal.detail else None)


def observe_fleet(desired: Desired, registry: Snapshot, outside: Iterable[TenantRow] = ()
                  ) -> FleetState:
    """Where the registry is now against where it was recorded, where this fleet keeps
    the file of each row in ``outside`` (rows whose path is outside the fence), and the
    unfinished operations naming files outside it, moved with the fleet's directories."""
    central = os.path.normpath(os.fspath(desired.settings.central))
    recorded = registry.fleet.get("central")
    origin: str | None = None
    shared: tuple[str, ...] = ()
    if recorded is not None and recorded != central:
        origin = MOVED
        try:
            if os.path.exists(recorded) and not os.path.samefile(recorded, central):
                origin = COPIED
        except OSError:
            pass  # our own registry cannot be stat'ed: it is being written, not copied
        if origin == COPIED:
            theirs = set(json.loads(registry.fleet.get("dirs", "[]")))
            ours = fence(desired).dirs
            shared = tuple(sorted(d for d in ours if d in theirs or os.path.realpath(d) in theirs))
    rerooted: dict[str, str] = {}
    unplaced: list[str] = []
    for row in outside:
        target = home(desired, row)
        if target is None:
            unplaced.append(row.name)
        else:
            rerooted[row.name] = target
    the_fence, journals = fence(desired), {}
    moved = dir_map(desired, registry.fleet) if origin is not None else {}
    for name, journal in registry.journal.items():
        if moved:
            found = translated(journal, moved, the_fence)
            if found is not None and found != journal:
                journals[name] = found
    return FleetState(central, the_fence, recorded, origin, shared,
                      MappingProxyType(rerooted), tuple(sorted(unplaced)),
                      MappingProxyType(journals))


def refusal(desired: Desired, state: FleetState) -> str | None:
    """Why no pass may run on this fleet (a copy sharing directories with its original),
    or None."""
    if not state.shared:
        return None
    return (f"this registry ({state.central}) is a copy of the fleet at {state.recorded}, "
            f"and {desired.source.name} still declares directories of that fleet: "
            f"{', '.join(state.shared)} — both fleets would act on the same tenant files, so "
            "nothing was done; give this copy directories of its own (e.g. `regions: "
            "{us: {path: /srv/staging/us}}`, copying the files there first), or remove one "
            "of the two registries")


def recorded_values(desired: Desired, snapshot_fleet: dict[str, str], copied: bool
                    ) -> dict[str, str]:
    """The ``fleet`` rows a pass leaves behind: a new id for a new fleet or a copy."""
    dirs = sorted({d for x in fence(desired).dirs for d in (x, os.path.realpath(x))})
    fleet_id = snapshot_fleet.get("id")
    if fleet_id is None or copied:
        fleet_id = uuid.uuid4().hex
    return {"id": fleet_id, "central": os.path.normpath(os.fspath(desired.settings.central)),
            "roots": json.dumps(roots(desired), sort_keys=True),
            "dirs": json.dumps(dirs)}




def stored(registry: Registry) -> dict[str, str]:
    """The ``fleet`` rows as recorded ({} before the first pass records them)."""
    has_table = registry.conn.execute(  # by name: upgrade steps may be renumbered
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'fleet'").fetchone()
    if has_table is None:
        return {}
    return dict(registry.conn.execute("SELECT key, value FROM fleet").fetchall())


def guard(desired: Desired, registry: Registry) -> None:
    """Refuse (``PermanentError``) to write to a registry that is a copy sharing
    directories with its original: called before any writer acts (``locked_registry``)."""
    state = observe_fleet(desired, _with_fleet(stored(registry)))
    why = refusal(desired, state)
    if why is not None:
        raise PermanentError(why)


def _with_fleet(values: dict[str, str]) -> Snapshot:
    empty = Snapshot.empty()
    return Snapshot(True, empty.tenants, empty.domains, empty.settings, empty.migrations,
                    empty.journal, empty.rollout, fleet=MappingProxyType(values))


def record(plan: Plan, ctx: Context) -> None:
    """Record where the registry is and which directories the fleet declares (first in
    every pass). A registry the plan found copied or moved here is recorded as such —
    one event — and a copy becomes a fleet of its own (a new id)."""
    before = stored(ctx.registry)
    change = next((c for c in plan.registry if c.table == "fleet"), None)
    values = recorded_values(ctx.desired, before, copied=change is not None
                             and change.key == COPIED)
    if values == before:
        return
    moved = dir_map(ctx.desired, before) if change is not None else {}
    with ctx.registry.durable_transaction():
        ctx.registry.set_fleet(values)
        for journal in _journals(ctx.registry) if moved else ():
            found = translated(journal, moved, fence(ctx.desired))
            if found is not None and found != journal:  # moved with the fleet (see plan)
                ctx.registry.journal_set(found.tenant, found.action, found.phase,
                                         source=found.source, dest=found.dest,
                                         temp=found.temp, detail=found.details() or None)
        if change is not None:
            ctx_record(ctx, "fleet", None, OK, level="warning", origin=change.key,
                       was=change.old, now=change.new, fleet_id=values["id"],
                       previous_id=before.get("id"))


def _journals(registry: Registry) -> list[JournalRow]:
    names = [r[0] for r in registry.conn.execute("SELECT tenant FROM journal")]
    return [j for j in (registry.journal_row(n) for n in names) if j is not None]


def reroot(action: Action, ctx: Context) -> Outcome:
    """Point the registry at the file this fleet keeps for the tenant (``action.path``)
    instead of ``action.source``: registry only, no file is read, moved or copied."""
    name = action.tenant
    check(ctx.desired, action.path, f"rerooting {name} to")
    assert action.path is not None and action.source is not None
    row = ctx.registry.tenant(name)
    if row is None or row.path not in (os.fspath(action.source), os.fspath(action.path)):
        raise PermanentError(f"rerooting {name}: its registry row changed since the plan "
                             "— nothing was changed; the next pass plans again")
    outcome = Outcome(name, "reroot", OK, action.from_version, action.to_version,
                      detail={"from": os.fspath(action.source), "path": os.fspath(action.path),
                              "from_region": row.region, "region": action.region})
    with ctx.registry.durable_transaction():
        ctx.registry.update_tenant(name, path=action.path, region=action.region or row.region)
        ctx_record(ctx, action, name, outcome)
    return outcome
