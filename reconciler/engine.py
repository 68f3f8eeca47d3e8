"""One reconciliation pass: load → (lock) → observe → plan → apply → record.

Why: the one-shot CLI and the daemon must do exactly the same thing, so the sequence
lives here once. ``load`` validates everything before any file is touched; ``preview``
plans without writing anything (not even creating ``central.db``); ``run_pass`` holds
the fleet lock for the whole observe-plan-apply cycle, so what it observed is still
true when it acts.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from reconciler import desired as desired_mod
from reconciler import migrations as migrations_mod
from reconciler import replication
from reconciler.apply import Result, apply
from reconciler.context import Context, Logger, never
from reconciler.desired import Desired
from reconciler.errors import InvalidInput, Problem
from reconciler.lock import FleetLock
from reconciler.migrations import Catalog
from reconciler.observe import Observed, observe
from reconciler.plan import Plan, plan
from reconciler.registry import Registry, Snapshot, utcnow
from reconciler.revision import revision as revision_of
from reconciler.revision import short

DEFAULT_CONFIG = "tenants.yaml"


@dataclass(frozen=True)
class Inputs:
    config: Path
    desired: Desired
    catalog: Catalog
    revision: str


def config_path(arg: str | None) -> Path:
    return Path(arg or os.environ.get("RECONCILE_CONFIG") or DEFAULT_CONFIG)


def load(config: Path) -> Inputs:
    """Validate ``tenants.yaml`` and the migrations together. Raises ``InvalidInput``
    listing every problem in both."""
    with collector_paused():  # the YAML node tree: 2.5 s → 0.9 s at 100k tenants
        return _load(config)


def _load(config: Path) -> Inputs:
    found: dict[str, Catalog] = {}
    catalog_problems: list[Problem] = []

    def latest_for(directory: Path) -> int | None:
        try:
            found["catalog"] = migrations_mod.load(directory)
        except InvalidInput as exc:
            catalog_problems.extend(exc.problems)
            return None
        return found["catalog"].latest

    try:
        desired = desired_mod.load(config, latest_for)
    except InvalidInput as exc:
        raise InvalidInput([*exc.problems, *catalog_problems]) from None
    if catalog_problems or "catalog" not in found:
        raise InvalidInput(catalog_problems)
    catalog = found["catalog"]
    return Inputs(config, desired, catalog,
                  revision_of(config, desired.settings.migrations_dir))


def verify_catalog(inputs: Inputs, snapshot: Snapshot) -> None:
    """Refuse the run when an applied migration was edited or removed since."""
    at: Counter[int] = Counter(t.schema_version for t in snapshot.tenants.values())

    def count(version: int) -> int:  # asked once per recorded migration: one scan, not N
        return sum(n for v, n in at.items() if v >= version)

    problems = migrations_mod.verify_recorded(inputs.catalog, snapshot.migrations, count)
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


def _plan_from(inputs: Inputs, snapshot: Snapshot, retry_failed: bool
               ) -> tuple[Plan, Observed]:
    verify_catalog(inputs, snapshot)
    observed = observe(inputs.desired, snapshot)
    return plan(inputs.desired, observed, inputs.catalog, revision=inputs.revision,
                retry_failed=retry_failed), observed


def preview(inputs: Inputs, retry_failed: bool = False) -> tuple[Plan, Observed]:
    """Plan without changing anything on disk."""
    with collector_paused():
        with Registry.reading(inputs.desired.settings.central) as reg:
            snapshot = reg.snapshot() if reg is not None else Snapshot.empty()
        return _plan_from(inputs, snapshot, retry_failed)


@contextlib.contextmanager
def locked_registry(inputs: Inputs, log: Logger, wait: bool) -> Iterator[Registry]:
    """The registry, opened for writing under the fleet lock (one writer per fleet)."""
    settings = inputs.desired.settings
    lock = FleetLock(settings.central)
    lock.acquire(wait, on_wait=lambda holder: log.warning(
        "waiting for lock", holder=holder, lock=str(lock.path)))
    try:
        registry = Registry.open(settings.central)
        try:
            yield registry
        finally:
            registry.close()
    finally:
        lock.release()


def run_pass(inputs: Inputs, log: Logger, *, wait: bool = True, retry_failed: bool = False,
             stop: Callable[[], bool] | None = None,
             stop_now: Callable[[], bool] | None = None,
             progress: Callable[[str, int, int, int], None] | None = None,
             note: str = "") -> Result:
    """Observe, plan and apply under the fleet lock; record the pass in ``runs``.

    ``stop``: no new action starts once true; ``stop_now``: no new transaction starts
    (see ``context.Context``). ``note``: appended to the recorded summary (the
    daemon's "tenants.yaml invalid — still applying rev X" or "pull refused: …"), so
    ``reconcile status`` shows it."""
    with locked_registry(inputs, log, wait) as registry:
        started = utcnow()
        with collector_paused():
            the_plan, _observed = _plan_from(inputs, registry.snapshot(), retry_failed)
        ctx = Context(inputs.desired, inputs.catalog, registry, inputs.revision,
                      log.bind(revision=short(inputs.revision)), stop or never,
                      retry_failed, progress, stop_now or never)
        result = apply(the_plan, ctx)
        if inputs.desired.settings.backup is not None:  # issue 14: Litestream follows
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
    in_sync = len(set(plan_.declared) - failed - waiting - problems)
    parts = [f"{in_sync} in sync"]
    if failed:
        parts.append(f"{len(failed)} failed")
    if waiting:
        parts.append(f"{len(waiting)} pending")
    if problems:
        parts.append(f"{len(problems)} problems")
    if result.halted:
        parts.append("rollout halted")
    parts.append(f"rev {short(plan_.revision)}")
    return ", ".join(parts)
