"""One reconciliation pass: load → (lock) → observe → plan → apply → record.

Why: the one-shot CLI and the daemon must do exactly the same thing, so the sequence
lives here once. ``load`` validates everything before any file is touched; ``preview``
plans without writing anything (not even creating ``central.db``); ``run_pass`` holds
the fleet lock for the whole observe-plan-apply cycle, so what it observed is still
true when it acts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from reconciler import agent, drift, follow, ownership, peers, regionargs, replication, xplan
from reconciler import desired as desired_mod
from reconciler import fleet as fleet_mod
from reconciler import migrations as migrations_mod
from reconciler.actions import Kind, Plan
from reconciler.apply import Result, apply
from reconciler.context import Context, Logger, never
from reconciler.desired import Desired
from reconciler.errors import InvalidInput, PermanentError, Problem
from reconciler.gitpull import Checkout
from reconciler.lock import FleetLock
from reconciler.migrations import Catalog
from reconciler.observe import Observed, observe
from reconciler.plan import plan
from reconciler.registry import Registry, Snapshot, utcnow
from reconciler.revision import revision as revision_of
from reconciler.revision import short
from reconciler.state import AgentRow
from reconciler.wording import plural

DEFAULT_CONFIG = "tenants.yaml"


@dataclass(frozen=True)
class Inputs:
    config: Path
    desired: Desired
    catalog: Catalog
    revision: str
    # issue 15: the agent's one region (None: every region, today's single host); then
    # ``desired`` is scoped to it (agent.scoped) and ``whole`` is every region's state
    region: str | None = None
    whole: Desired | None = None


def config_path(arg: str | None) -> Path:
    return Path(arg or os.environ.get("RECONCILE_CONFIG") or DEFAULT_CONFIG)


def load(config: Path, region: str | None = None, *, adopt: bool = True,
         held: bool = False, commit: Checkout | None = None) -> Inputs:
    """Validate ``tenants.yaml`` and the migrations together. Raises ``InvalidInput``
    listing every problem in both. ``region``: the agent's (``--region``), checked
    against tenants.yaml (``agent.check``) and the desired state scoped to it.

    A registry a region agent wrote (its ``agent`` row names the region) belongs to that
    region: without ``region`` a command on that host acts as that region's agent
    (``adopt``) — a plain ``reconcile`` there must never create the other regions'
    tenants — or, for the daemon (``adopt=False``), is refused; another ``region`` is
    refused (``InvalidInput``). ``held``: this process may hold the registry open (the
    daemon's heartbeat), see ``_registry_region``. ``commit``: read tenants.yaml and
    the migrations from that commit's checkout instead of the work tree (pull mode's
    fallback, ``lastvalid``); paths still mean the same places, the revision is the
    commit's."""
    with collector_paused():  # the YAML node tree: 2.5 s → 0.9 s at 100k tenants
        inputs = _load(config) if commit is None else _load_commit(config, commit)
    central = inputs.desired.settings.central
    owner = _registry_region(central, in_daemon=held)
    if owner is not None and region != owner and (region is not None or not adopt):
        raise InvalidInput([Problem(
            agent.OPTION, None, None,
            f"{central} is the registry of region {owner}'s agent"
            + (f", not {region}'s" if region is not None else
               ": the daemon on this host serves that region only"),
            f"run it with `--region {owner}` on this host (each region's agent on its own "
            "host, with its own central.db)")])
    if region is None:
        region = owner
    if region is None:
        return inputs
    agent.check(inputs.desired, region)
    private = regionargs.shared_replica(inputs.desired, region)
    if private is not None:
        raise InvalidInput([private])
    return Inputs(config, agent.scoped(inputs.desired, region), inputs.catalog,
                  inputs.revision, region, inputs.desired)


def _registry_region(central: Path, in_daemon: bool) -> str | None:
    """The region whose agent wrote the registry at ``central`` (its ``agent`` row), or
    None: a host serving every region, no registry yet, or one that cannot be read (the
    command then reports that itself). ``in_daemon``: this process may hold the registry
    open (the heartbeat's connection), so read through SQLite's own connection, whose
    close keeps that connection's POSIX locks (``Registry.reading``); commands read
    without leaving a byte behind (``Registry.read``)."""
    def agent_row(reg: Registry | None) -> AgentRow | None:
        return reg.agent() if reg is not None else None
    try:
        if in_daemon:
            with Registry.reading(central) as reg:
                row = agent_row(reg)
        else:
            row = Registry.read(central, agent_row, None)
    except (PermanentError, OSError, sqlite3.Error):
        return None
    return row.region if row is not None else None


def _load(config: Path) -> Inputs:
    desired, catalog = _read(config, lambda p: p)
    return Inputs(config, desired, catalog,
                  revision_of(config, desired.settings.migrations_dir))


def _load_commit(config: Path, commit: Checkout) -> Inputs:
    """``_load`` of ``commit``'s tenants.yaml and migrations (what lies inside the
    repository is read from its checkout; the migrations, once read, keep their real
    paths, as the compiled steps no longer need the files)."""
    top, tree = commit.top.resolve(), commit.tree

    def there(path: Path) -> Path:
        path = path.resolve()
        return tree / path.relative_to(top) if path.is_relative_to(top) else path

    def here(path: Path) -> Path:
        return top / path.relative_to(tree) if path.is_relative_to(tree) else path

    desired, catalog = _read(there(config), there, base=config.resolve().parent)
    catalog = dataclasses.replace(
        catalog, directory=here(catalog.directory),
        migrations=tuple(dataclasses.replace(m, path=here(m.path)) for m in catalog.migrations),
        checks=tuple(dataclasses.replace(c, path=here(c.path)) for c in catalog.checks))
    return Inputs(config, dataclasses.replace(desired, source=config), catalog, commit.commit)


def _read(config: Path, where: Callable[[Path], Path], base: Path | None = None
          ) -> tuple[Desired, Catalog]:
    """tenants.yaml and the migrations it names (read from ``where(directory)``),
    validated together: ``InvalidInput`` lists every problem in both."""
    found: dict[str, Catalog] = {}
    catalog_problems: list[Problem] = []

    def latest_for(directory: Path) -> int | None:
        try:
            found["catalog"] = migrations_mod.load(where(directory))
        except InvalidInput as exc:
            catalog_problems.extend(exc.problems)
            return None
        return found["catalog"].latest

    try:
        desired = desired_mod.load(config, latest_for, base=base)
    except InvalidInput as exc:
        raise InvalidInput([*exc.problems, *catalog_problems]) from None
    if catalog_problems or "catalog" not in found:
        raise InvalidInput(catalog_problems)
    return desired, found["catalog"]


def verify_catalog(inputs: Inputs, snapshot: Snapshot) -> None:
    """Refuse the run when an applied migration was edited or removed since.

    A checksum is recorded before a migration's first use (``apply``) and confirmed
    once a tenant committed it. An unconfirmed record that no longer matches its file
    is judged by the files themselves (a pass killed after a tenant committed the step
    left the registry behind): refused when any tenant file holds that version, else
    the edit is allowed (the step never committed anywhere) and the next use records
    the new checksum."""
    at: Counter[int] = Counter(t.schema_version for t in snapshot.tenants.values())
    recorded = dict(snapshot.migrations)
    by_version = {m.version: m.sha256 for m in inputs.catalog.migrations}
    unsure = [v for v in snapshot.unconfirmed
              if v in recorded and by_version.get(v) != recorded[v][1]]
    if unsure:
        files = observe(inputs.desired, snapshot).files.values()
        at_files = Counter(f.user_version for f in files if f.user_version is not None)
        for v in unsure:
            if not any(n for ver, n in at_files.items() if ver >= v):
                del recorded[v]  # committed nowhere: free to change
        at = Counter({v: max(at[v], at_files[v]) for v in set(at) | set(at_files)})

    def count(version: int) -> int:  # asked once per recorded migration: one scan, not N
        return sum(n for v, n in at.items() if v >= version)

    problems = migrations_mod.verify_recorded(inputs.catalog, recorded, count)
    if problems:
        raise InvalidInput(problems)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a pass reads and plans.

    That part (and loading ``tenants.yaml``) allocates a few objects per tenant and
    frees none until it ends, so the collector's full scans (each over every live
    object) run ever more often as the fleet grows and find nothing (rows, specs, file
    states and YAML nodes hold no cycles): ~10% of a no-op pass and 60% of loading at
    100k tenants. Reference counting still frees everything as usual;
    anything cyclic is collected once the collector is back on."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _plan_from(inputs: Inputs, snapshot: Snapshot, retry_failed: bool, mode: str = "rw"
               ) -> tuple[Plan, Observed]:
    # a copy sharing its original's directories is refused before a file is even read
    why = fleet_mod.refusal(inputs.desired, fleet_mod.observe_fleet(inputs.desired, snapshot))
    if why is not None:
        raise PermanentError(why)
    verify_catalog(inputs, snapshot)
    observed = observe(inputs.desired, snapshot, mode=mode, catalog=inputs.catalog)
    if inputs.region is not None and inputs.whole is not None:  # a region agent (issue 15)
        return _agent_plan(inputs, observed, retry_failed)
    return plan(inputs.desired, observed, inputs.catalog, revision=inputs.revision,
                retry_failed=retry_failed), observed


def _agent_plan(inputs: Inputs, observed: Observed, retry_failed: bool
                ) -> tuple[Plan, Observed]:
    """A region agent plans with what it knows of the other regions: their followed
    registries (``peers.read_views``), then ``xplan``'s rules."""
    assert inputs.region is not None and inputs.whole is not None
    observed = dataclasses.replace(observed, peers=peers.read_views(
        inputs.whole, inputs.region, time.time()))
    return xplan.plan_agent(inputs.whole, inputs.desired, observed, inputs.catalog,
                            inputs.region, stale_after=inputs.desired.settings.stale_after,
                            revision=inputs.revision, retry_failed=retry_failed), observed


def preview(inputs: Inputs, retry_failed: bool = False, *, between_passes: bool = False,
            wait: bool = True, log: Logger | None = None) -> tuple[Plan, Observed]:
    """Plan without changing anything on disk.

    ``between_passes``: the plan a reviewer reads — taken while no pass runs (holding a
    shared lock, see ``FleetLock.shared``), waiting for one in progress (``wait``) or
    raising ``PassInProgress``, never mixing a half-done pass into the diff."""
    if not between_passes:
        return _preview(inputs, retry_failed)
    lock = FleetLock(inputs.desired.settings.central)
    with lock.shared(wait, on_wait=None if log is None else lambda holder: log.warning(
            "waiting for the pass in progress to finish before planning", holder=holder,
            lock=str(lock.path))):
        return _preview(inputs, retry_failed)


def _preview(inputs: Inputs, retry_failed: bool) -> tuple[Plan, Observed]:
    with collector_paused():
        snapshot = Registry.read(inputs.desired.settings.central, Registry.snapshot,
                                 Snapshot.empty())
        return _plan_from(inputs, snapshot, retry_failed, mode="ro")  # changes no byte


@contextlib.contextmanager
def locked_registry(inputs: Inputs, log: Logger, wait: bool) -> Iterator[Registry]:
    """The registry, opened for writing under the fleet lock (one writer per fleet)."""
    settings = inputs.desired.settings
    ownership.require_owner(settings.central)  # files it creates must be the fleet's owner's
    lock = FleetLock(settings.central)
    lock.acquire(wait, on_wait=lambda holder: log.warning(
        "waiting for lock", holder=holder, lock=str(lock.path)))
    try:
        registry = Registry.open(settings.central)
        try:
            fleet_mod.guard(inputs.desired, registry)  # a copy sharing its original's files
            yield registry
        finally:
            registry.close()
    finally:
        lock.release()


def run_pass(inputs: Inputs, log: Logger, *, wait: bool = True, retry_failed: bool = False,
             stop: Callable[[], bool] | None = None,
             stop_now: Callable[[], bool] | None = None,
             progress: Callable[[str, int, int, int], None] | None = None,
             note: str = "", check_wal: bool = True) -> Result:
    """Observe, plan and apply under the fleet lock; record the pass in ``runs``.

    ``stop``: no new action starts once true; ``stop_now``: no new transaction starts
    (see ``context.Context``). ``note``: appended to the recorded summary (the
    daemon's "tenants.yaml invalid — still applying rev X" or "pull refused: …"), so
    ``reconcile status`` shows it. ``check_wal``: look whether Litestream stopped on a
    commit its writer never finished (``replication.unstick``; one read per file)."""
    with locked_registry(inputs, log, wait) as registry:
        started = utcnow()
        if inputs.region is not None:  # issue 15: which agent writes this registry, alive
            with registry.transaction():
                registry.set_agent(inputs.region, socket.gethostname(), inputs.revision,
                                   time.time())
                # and where the other regions' registries are followed, so routing and
                # `route` on this host say "cannot tell" rather than "not found"
                registry.set_regions(follow.region_rows(inputs.whole or inputs.desired,
                                                        inputs.region))
        with collector_paused():
            the_plan, observed = _plan_from(inputs, registry.snapshot(), retry_failed)
        ctx = Context(inputs.desired, inputs.catalog, registry, inputs.revision,
                      log.bind(revision=short(inputs.revision)), stop or never,
                      retry_failed, progress, stop_now or never)
        if observed.drift_remember is not None:
            drift.record(ctx, observed.drift_checked, observed.drift_remember,
                         {a.path.as_posix(): a.tenant for a in the_plan.actions
                          if a.kind in (Kind.DRIFT, Kind.DRIFT_WARN) and a.path})
        result = apply(the_plan, ctx)
        if inputs.desired.settings.backup is not None:  # issue 14: Litestream follows
            for tenant in replication.unstick(inputs.desired.settings, registry,
                                              observed.backups, log, check_wal=check_wal):
                registry.event(revision=inputs.revision, tenant=tenant, action="backup",
                               outcome="restarted", detail={
                                   "reason": "Litestream stopped on a commit its writer "
                                   "never finished (-wal emptied, registered again)"})
            replication.sync_registrations(inputs.desired.settings, registry, log)
        registry.record_run(started, inputs.revision,
                            summary(result) + (f"; {note}" if note else ""),
                            {"failed": [o.tenant for o in result.failed],
                             "problems": [a.tenant for a in the_plan.problems],
                             "halted": result.halted})
        return result


def summary(result: Result) -> str:
    """One line, e.g. ``42 in sync, 1 failed, 2 problems, rev 3f2a9c1``."""
    plan_ = result.plan
    failed = {o.tenant for o in result.failed}
    waiting = {o.tenant for o in result.unfinished} - failed  # halted, busy or stopped
    problems = {a.tenant for a in plan_.problems} - failed - waiting
    # a region agent's waits (issue 15: another region's hand-off or registry view)
    held = {a.tenant for a in plan_.actions if a.kind is Kind.WAIT} - failed - waiting - problems
    in_sync = len(set(plan_.declared) - failed - waiting - problems - held)
    parts = [f"{in_sync} in sync"]
    if held:
        parts.append(f"{len(held)} waiting")
    if failed:
        parts.append(f"{len(failed)} failed")
    if waiting:
        parts.append(f"{len(waiting)} pending")
    if problems:
        parts.append(plural(len(problems), "problem"))
    if result.halted:
        parts.append("rollout halted")
    parts.append(f"rev {short(plan_.revision)}")
    return ", ".join(parts)
