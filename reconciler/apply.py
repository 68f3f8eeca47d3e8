"""Carry out a ``Plan``: one function per action, each idempotent and recorded.

Why: the planner decides, this module does — and nothing else writes tenant files or
the registry during a pass. Order matters: registry settings first, then per-tenant
actions in plan order (create, adopt, restore, relocate, correct, archive, reports),
then migrations in rollout waves, then domains (a domain needs its tenant's row).

Invariants:
* a tenant whose earlier action failed gets no later action in the same pass;
* the registry is written only after the file operation it describes succeeded,
  so a crash between the two is seen next pass as drift and corrected from the file;
* ``ctx.stop()`` is honoured only between actions: an action in flight completes;
  ``ctx.stop_now()`` also inside one, at its next committed point (see ``context``),
  and then nothing more is written in this pass but its record.

Relocations run up to ``rollout.parallel`` at once: each touches only its own tenant's
files and registry rows, and most of its time is SQLite copying and checking pages with
the GIL released, so on a multi-core machine a fleet moves regions several times faster.
Each worker has its own registry connection (SQLite serialises their short
transactions); outcomes are reported in plan order.
"""

from __future__ import annotations

import dataclasses
import queue
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconciler import archive, fleet, relocate, rollout, tenantdb, xmove
from reconciler.actions import Action, Kind, Plan
from reconciler.context import (
    FAILED,
    OK,
    PENDING,
    REPORTED,
    RETRY,
    SKIPPED,
    Context,
    Outcome,
    Timer,
    crash_point,
    record,
)
from reconciler.errors import PermanentError, RetryableError
from reconciler.registry import Registry


@dataclass(frozen=True)
class Result:
    plan: Plan
    outcomes: tuple[Outcome, ...]
    halted: bool = False
    stopped: bool = False

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.outcome in (FAILED,))

    @property
    def unfinished(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.outcome in (FAILED, RETRY, "pending"))

    @property
    def ok(self) -> bool:
        return not self.unfinished and not self.plan.problems and not self.halted \
            and not self.stopped


def apply(plan: Plan, ctx: Context) -> Result:
    outcomes: list[Outcome] = []
    fleet.record(plan, ctx)
    _sync_settings(plan, ctx)
    _record_checksums_before_use(plan, ctx)
    blocked: set[str] = set()
    migrations: list[Action] = []
    stopped = False
    relocations = [a for a in plan.actions if a.kind is Kind.RELOCATE]
    for action in plan.actions:
        if action.kind is Kind.RELOCATE:
            if action is not relocations[0]:
                continue  # they all ran with the first one
            outcomes.extend(_skipped(a) for a in relocations if a.tenant in blocked)
            moved = _run_at_once([a for a in relocations if a.tenant not in blocked], ctx)
            outcomes.extend(o for o in moved if o is not None)
            blocked.update(o.tenant for o in moved if o and o.outcome in (FAILED, RETRY))
            if None in moved:
                stopped = True
                break
            continue
        if action.tenant in blocked:
            outcomes.append(_skipped(action))
            continue
        if action.kind is Kind.MIGRATE:
            migrations.append(action)
            continue
        if (action.is_change and ctx.stopping()) or ctx.stop_now():
            stopped = True
            break
        outcome = _run(action, ctx)
        outcomes.append(outcome)
        if outcome.outcome in (FAILED, RETRY):
            blocked.add(action.tenant)
    halted = False
    if not stopped:
        migrations = [a for a in migrations if a.tenant not in blocked]
        done, halted, stopped = rollout.run(migrations, plan, ctx)
        outcomes.extend(done)
    stopped = stopped or ctx.stop_now()
    if not ctx.stop_now():
        _sync_domains(plan, ctx)
    return Result(plan, tuple(outcomes), halted=halted, stopped=stopped)


def _record_checksums_before_use(plan: Plan, ctx: Context) -> None:
    """Make the checksum of every migration this pass may run durable in the registry
    before any tenant runs it, so a pass killed at any point cannot leave a committed
    step without its recorded checksum (the edited-after-applied refusal holds)."""
    versions = sorted({v for a in plan.actions
                       if a.kind in (Kind.CREATE, Kind.MIGRATE) and a.to_version is not None
                       for v in range((a.from_version or 0) + 1, a.to_version + 1)})
    if not versions:
        return
    with ctx.registry.durable_transaction():
        for v in versions:
            m = ctx.catalog.migrations[v - 1]
            ctx.registry.intend_migration(m.version, m.name, m.sha256)
    crash_point("apply:after-checksums")


def _skipped(action: Action) -> Outcome:
    return Outcome(action.tenant, action.kind.value, SKIPPED,
                   error="an earlier action for this tenant did not finish")


def _run_at_once(actions: list[Action], ctx: Context) -> list[Outcome | None]:
    """Run independent actions (one per tenant) up to ``rollout.parallel`` at once; None
    for each that did not start because the pass is stopping."""
    workers = min(ctx.desired.settings.rollout.parallel, len(actions))

    def one(action: Action, worker_ctx: Context) -> Outcome | None:
        if ctx.stopping():
            return None
        return _run(action, worker_ctx)

    if workers <= 1:
        return [one(a, ctx) for a in actions]
    idle: queue.SimpleQueue[Registry] = queue.SimpleQueue()
    registries = [Registry.open(ctx.registry.path) for _ in range(workers)]
    for registry in registries:
        idle.put(registry)

    def with_own_registry(action: Action) -> Outcome | None:
        registry = idle.get()
        try:
            return one(action, dataclasses.replace(ctx, registry=registry))
        finally:
            idle.put(registry)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(with_own_registry, actions))
    finally:
        for registry in registries:
            registry.close()


def _run(action: Action, ctx: Context) -> Outcome:
    handler = HANDLERS.get(action.kind, report)
    timer = Timer()
    try:
        if action.kind in _TOUCHES_FILES:  # the last guard: its own fleet's files only
            fleet.check(ctx.desired, action.path, f"{action.tenant}'s path")
            fleet.check(ctx.desired, action.source, f"{action.tenant}'s file")
        return handler(action, ctx)
    except RetryableError as exc:
        outcome = Outcome(action.tenant, action.kind.value, RETRY, action.from_version,
                          action.to_version, timer.ms, str(exc))
    except (PermanentError, OSError, sqlite3.Error) as exc:
        outcome = Outcome(action.tenant, action.kind.value, FAILED, action.from_version,
                          action.to_version, timer.ms, f"{type(exc).__name__}: {exc}"
                          if not isinstance(exc, PermanentError) else str(exc))
    with ctx.registry.transaction():
        record(ctx, action, action.tenant, outcome)
    return outcome


_TOUCHES_FILES = frozenset((Kind.CREATE, Kind.ADOPT, Kind.RESTORE, Kind.RELOCATE, Kind.ARCHIVE))


def create(action: Action, ctx: Context) -> Outcome:
    assert action.path is not None and action.to_version is not None
    timer = Timer()
    result = tenantdb.create(action.path, ctx.catalog, action.to_version,
                             ctx.desired.settings.busy_timeout, ctx.stop_now,
                             ctx.desired.settings.rollout.transaction)
    if result.stopped:  # the unfinished file was discarded: created on the next pass
        outcome = Outcome(action.tenant, "create", PENDING, 0, None, timer.ms,
                          "stopped at once (second signal) before it was complete")
        with ctx.registry.transaction():
            record(ctx, action, action.tenant, outcome, level="warning")
        return outcome
    if result.error is not None:
        # nothing was registered and the temporary file is gone: the next pass retries
        outcome = Outcome(action.tenant, "create", FAILED, 0, result.to_version, timer.ms,
                          result.error)
        with ctx.registry.transaction():
            record(ctx, action, action.tenant, outcome)
        return outcome
    crash_point("create.after_link")  # file in place, not registered: next pass adopts it
    outcome = Outcome(action.tenant, "create", OK, 0, result.to_version, timer.ms,
                      detail={"region": action.region, "path": str(action.path)})
    with ctx.registry.transaction():
        ctx.registry.upsert_tenant(action.tenant, action.region or "", action.path,
                                   result.to_version, "active", action.protected)
        rollout.record_applied(ctx, result.applied)
        record(ctx, action, action.tenant, outcome)
    return outcome


def adopt(action: Action, ctx: Context) -> Outcome:
    assert action.path is not None and action.from_version is not None
    outcome = Outcome(action.tenant, "adopt", OK, action.from_version, action.from_version,
                      detail={"region": action.region, "path": str(action.path)})
    with ctx.registry.transaction():
        ctx.registry.upsert_tenant(action.tenant, action.region or "", action.path,
                                   action.from_version, "active", action.protected)
        record(ctx, action, action.tenant, outcome)
    return outcome


def correct(action: Action, ctx: Context) -> Outcome:
    fields: dict[str, object] = {"status": action.status or "active",
                                 "protected": int(action.protected)}
    if action.to_version is not None:
        fields["schema_version"] = action.to_version
    if fields["status"] == "active":
        fields.update(failure=None, failed_key=None, failures=0, retry_at=None)
    outcome = Outcome(action.tenant, "correct", OK, action.from_version, action.to_version,
                      detail={"reason": action.detail})
    with ctx.registry.transaction():
        ctx.registry.update_tenant(action.tenant, **fields)
        record(ctx, action, action.tenant, outcome, level="warning")
    return outcome


def set_status(action: Action, ctx: Context) -> Outcome:
    """``suspend`` / ``unsuspend``: the registry status routing answers by, and one event."""
    status = action.status or "active"
    fields: dict[str, object] = {"status": status}
    if status == "active":
        fields.update(failure=None, failed_key=None, failures=0, retry_at=None)
    outcome = Outcome(action.tenant, action.kind.value, OK, action.from_version,
                      action.to_version, detail={"reason": action.detail})
    with ctx.registry.transaction():
        ctx.registry.update_tenant(action.tenant, **fields)
        record(ctx, action, action.tenant, outcome)
    return outcome


def report(action: Action, ctx: Context) -> Outcome:
    """A problem or state the reconciler must not fix alone: set status, say so once."""
    outcome = Outcome(action.tenant, action.kind.value, REPORTED, action.from_version,
                      action.to_version, detail={"reason": action.detail})
    row = ctx.registry.tenant(action.tenant)
    if row is not None and action.status is not None and row.status != action.status:
        with ctx.registry.transaction():
            ctx.registry.update_tenant(action.tenant, status=action.status)
            record(ctx, action, action.tenant, outcome, level="warning")
    else:
        level = "warning" if action.is_problem else "info"
        getattr(ctx.log, "debug" if row is not None else level)(
            action.kind.value, tenant=action.tenant, outcome=REPORTED, reason=action.detail,
            revision=ctx.revision)
    return outcome


def _sync_settings(plan: Plan, ctx: Context) -> None:
    changes = [c for c in plan.registry if c.table == "settings"]
    if not changes:
        return
    with ctx.registry.transaction():
        for c in changes:
            ctx.registry.set_setting(c.key, c.new)
            record(ctx, "setting", None, OK, key=c.key, old=c.old, new=c.new)


def _sync_domains(plan: Plan, ctx: Context) -> None:
    changes = [c for c in plan.registry if c.table == "domains"]
    if not changes:
        return
    with ctx.registry.transaction():
        for c in changes:
            if c.new is not None and ctx.registry.tenant(c.new) is None:
                continue  # its tenant is not registered yet (create failed or deferred)
            ctx.registry.set_domain(c.key, c.new)
            record(ctx, "domain", c.new or c.old, OK, domain=c.key, old=c.old, new=c.new)


Handler = Callable[[Action, Context], Outcome]
HANDLERS: dict[Kind, Handler] = {
    Kind.CREATE: create,
    Kind.ADOPT: adopt,
    Kind.CORRECT: correct,
    Kind.RELOCATE: relocate.run,
    Kind.ARCHIVE: archive.archive,
    Kind.RESTORE: archive.restore,
    Kind.REROOT: fleet.reroot,
    Kind.SUSPEND: set_status,
    Kind.UNSUSPEND: set_status,
    # a region agent's cross-host moves (issue 15)
    Kind.HANDOFF: xmove.handoff,
    Kind.TAKEOVER: xmove.takeover,
    Kind.RELEASE: xmove.release,
    Kind.CANCEL: xmove.cancel,
    Kind.ABANDON: xmove.abandon,
}

