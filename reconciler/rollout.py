"""Rolling migrations: canary first, then waves, a health gate on each tenant, a halt switch.

Why: a schema change that breaks on some customer's data must stop after a handful of
tenants, not after ten thousand (DESIGN §6). The planner computes the waves
(deterministic, sorted by name); this module runs them.

Threading model: a worker touches only its own tenant file (and that file's snapshot):
per tenant one step connection (``steprun``) for the migration and the snapshot, and one
plain connection for the health gate (nothing a step sets reaches it), opened and closed
in the worker (SQLite releases the GIL while it works). Every registry
write, every log line and every progress update happens on the calling thread, and
results are recorded in wave order — so the registry has one writer, each tenant's
log lines are whole, and ``parallel: N`` ends in exactly the state of ``parallel: 1``.
The workers live for the whole rollout, and a wave's record is written while the next
wave runs (that wave starts only once the earlier one was judged: halts are decided
before any further file changes).

Invariants:
* more failures than ``rollout.max_failures`` halt the rollout: later waves do not
  run, their tenants stay at their version with status ``pending``, and the registry's
  ``rollout`` table remembers the halt under the plan's ``rollout_key`` so the planner
  holds them until the desired state or migrations change (or ``--retry-failed``);
* a busy tenant (an application holds its write lock beyond ``busy_timeout``) is
  retried later in the same pass, and is never marked failed for being busy;
* with ``rollout.snapshot`` a tenant whose migration or health gate fails is restored
  from its copy (see ``snapshot``); copies are removed once a rollout passes; with
  ``rollout.snapshot: replica`` it is put back from its Litestream replica by the
  calling thread once its failure is recorded (see ``putback``);
* a wave's tenants are ``migrating`` in the registry before their files change, and
  ``active``, ``failed`` or ``pending`` (busy, or held by a halt) once it is recorded:
  a pass killed in between leaves ``migrating``, which the planner re-gates;
* ``ctx.stop_now`` (the daemon's second signal) reaches the workers: a tenant not yet
  started is not started, one in flight ends after its committed step (no health gate)
  and is recorded ``pending`` at exactly that version; no further wave starts.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from reconciler import context, putback, snapshot, steprun, tenantdb
from reconciler.actions import Action, Kind, Plan
from reconciler.context import FAILED, OK, PENDING, RETRY, Context, Outcome, Timer, record
from reconciler.errors import RetryableError, is_busy
from reconciler.migrations import Catalog

BACKOFF_BASE = 30.0
BACKOFF_CAP = 3600.0
BUSY_ROUNDS = 3  # how often a busy tenant is retried later in the same pass
BUSY_PAUSE = 0.2  # seconds before the first busy retry round (grows per round)
HALTED = "halted"


@dataclass(frozen=True)
class _Done:
    action: Action
    result: tenantdb.MigrateResult | None
    duration_ms: int
    busy: str | None = None
    not_started: bool = False  # ``stop_now`` was set before this tenant's turn
    put_back: putback.ReplicaMark | None = None  # to restore from the replica (failed)

    @property
    def stopped(self) -> bool:
        return self.not_started or (self.result is not None and self.result.stopped)


class _Tally:
    """Counts finished tenants and reports progress (calling thread only)."""

    def __init__(self, ctx: Context, total: int) -> None:
        self.ctx = ctx
        self.total = total
        self.done = 0
        self.failed = 0

    def finished(self, d: _Done) -> None:
        if d.busy is not None or d.not_started:
            return
        self.done += 1
        self.failed += d.result is not None and d.result.error is not None
        if self.ctx.progress is not None:
            self.ctx.progress("migrate", self.done, self.total, self.failed)


def backoff(failures: int) -> float:
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, failures - 1)))


@dataclass(frozen=True)
class _Finished:
    """A wave whose tenants are done, waiting to be recorded."""

    number: int
    tenants: tuple[str, ...]
    done: list[_Done]
    duration_ms: int
    failed: int
    failures: int  # the rollout's total, this wave included
    halted: bool
    left: list[Action]  # tenants of later waves (and busy ones), if halted


def run(actions: list[Action], plan: Plan, ctx: Context
        ) -> tuple[list[Outcome], bool, bool]:
    """Migrate ``actions`` wave by wave. Returns (outcomes, halted, stopped).

    A wave starts once the one before it is done and judged (its failures counted);
    the registry bookkeeping of that earlier wave is then written while the new one
    runs, so the workers are not idle during it. A pass killed before that record is
    written leaves those tenants ``migrating``, which the planner re-gates."""
    by_name = {a.tenant: a for a in actions}
    ordered = [[by_name[n] for n in wave if n in by_name] for wave in plan.waves]
    ordered = [w for w in ordered if w]
    settings = ctx.desired.settings.rollout
    outcomes: list[Outcome] = []
    tally = _Tally(ctx, len(by_name))
    failures = 0
    busy: list[Action] = []
    halted = stopped = False
    unrecorded: _Finished | None = None
    workers = min(max(1, settings.parallel), max((len(w) for w in ordered), default=1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for number, wave in enumerate(ordered, start=1):
            if halted or stopped or ctx.stopping():
                stopped = stopped or not halted
                outcomes.extend(_pending(a, "rollout halted" if halted else "stopping")
                                for a in wave)
                continue
            timer = Timer()
            _starting(ctx, wave)
            running = _Wave(wave, ctx, pool if workers > 1 else None)
            if unrecorded is not None:  # while this wave runs
                context.crash_point("rollout:before-record-previous")
                outcomes.extend(_record_wave(ctx, plan, unrecorded, len(ordered)))
                unrecorded = None
            done = running.wait(tally)
            context.crash_point("rollout:before-record")
            busy.extend(d.action for d in done if d.busy is not None)
            stopped = any(d.stopped for d in done)
            left = [a for w in ordered[number:] for a in w] + busy
            wave_failed = sum(_fails(d) for d in done)
            failures += wave_failed
            halted = failures > settings.max_failures and bool(left)
            unrecorded = _Finished(number, tuple(a.tenant for a in wave), done, timer.ms,
                                   wave_failed, failures, halted, left if halted else [])
    if unrecorded is not None:
        outcomes.extend(_record_wave(ctx, plan, unrecorded, len(ordered)))
    if halted:
        outcomes.extend(_pending(a, "rollout halted") for a in busy)
        busy = []
    retried, failures = _retry_busy(busy, ctx, tally, failures)
    outcomes.extend(retried)
    held = any(a.kind is Kind.PENDING for a in plan.actions)  # an earlier halt still holds
    if not halted and not stopped and not held and plan.rollout_key:
        _passed(ctx, plan, outcomes)
    return outcomes, halted, stopped


def _fails(d: _Done) -> bool:
    """Whether ``_record`` will count this tenant failed (decided before it records)."""
    return d.result is not None and not d.result.stopped and d.result.error is not None


def _record_wave(ctx: Context, plan: Plan, w: _Finished, waves: int) -> list[Outcome]:
    settings = ctx.desired.settings.rollout
    with ctx.registry.transaction():
        recorded = _record(ctx, w.done)
        if w.halted:
            _halt(ctx, plan, w.left, w.failures)
        record(ctx, "wave", None, FAILED if w.halted else OK, duration_ms=w.duration_ms,
               wave=w.number, waves=waves, tenants=list(w.tenants), failed=w.failed,
               failures=w.failures, max_failures=settings.max_failures, halted=w.halted,
               pending=len(w.left) if w.halted else None)
    return _put_back(ctx, w.done, recorded)


def _put_back(ctx: Context, done: list[_Done], recorded: list[Outcome]) -> list[Outcome]:
    """Failed tenants with a replica mark go back to it (``rollout.snapshot:
    replica``), one by one on the calling thread; their outcomes say so."""
    marks = {d.action.tenant: d.put_back for d in done if d.put_back is not None}
    if not marks:
        return recorded
    out = []
    for o in recorded:
        mark = marks.get(o.tenant)
        if mark is None or not o.failed or o.from_version is None:
            out.append(o)
            continue
        back, said = putback.put_back(ctx, mark, o.from_version)
        out.append(replace(o, to_version=o.from_version if back else o.to_version,
                           error=f"{o.error}; {said}"))
    return out


def _starting(ctx: Context, actions: list[Action]) -> None:
    """Mark a wave ``migrating`` before its files change: a pass killed before the
    wave is recorded leaves them so, and the planner then re-runs their health gate."""
    with ctx.registry.transaction():
        for a in actions:
            ctx.registry.update_tenant(a.tenant, status="migrating")


def _record(ctx: Context, done: list[_Done]) -> list[Outcome]:
    """Record a finished wave (caller holds the transaction); busy tenants wait as
    ``pending`` for their retry."""
    out = []
    for d in done:
        if d.result is None:
            ctx.registry.update_tenant(d.action.tenant, status="pending")
            if d.not_started:
                out.append(_pending(d.action, "stopping: not started"))
        else:
            out.append(record_migrated(ctx, d.action, d.result, d.duration_ms))
    return out


def _pending(action: Action, why: str) -> Outcome:
    return Outcome(action.tenant, "migrate", PENDING, action.from_version, action.to_version,
                   error=why)


def _halt(ctx: Context, plan: Plan, left: list[Action], failures: int) -> None:
    """Registry bookkeeping for a halt (caller holds the wave's transaction)."""
    for action in left:
        ctx.registry.update_tenant(action.tenant, status="pending")
    ctx.registry.set_rollout(plan.rollout_key, HALTED, {
        "revision": ctx.revision, "failures": failures,
        "max_failures": ctx.desired.settings.rollout.max_failures,
        "pending": len(left)})


def _passed(ctx: Context, plan: Plan, outcomes: list[Outcome]) -> None:
    """The rollout passed: forget earlier halts, remove the snapshots it kept.

    A failed tenant keeps its copy (an operator may need it); every other declared
    tenant's copy goes — looked for only when snapshots are on or a halted rollout
    (which may have kept some) is being forgotten."""
    with ctx.registry.transaction():
        forgotten = ctx.registry.clear_rollouts()
    if not (forgotten or ctx.desired.settings.rollout.snapshot):
        return
    keep = {o.tenant for o in outcomes if o.failed}
    keep.update(a.tenant for a in plan.actions if a.kind is Kind.FAILED)
    d = ctx.desired
    snapshot.remove_for(d.tenant_path(name, spec.region) for name, spec in d.tenants.items()
                        if name not in keep)


def _retry_busy(busy: list[Action], ctx: Context, tally: _Tally, failures: int
                ) -> tuple[list[Outcome], int]:
    """Busy tenants get up to ``BUSY_ROUNDS`` more attempts, one at a time."""
    out: list[Outcome] = []
    for round_ in range(1, BUSY_ROUNDS + 1):
        if not busy or ctx.stopping():
            break
        time.sleep(BUSY_PAUSE * round_)
        timer = Timer()
        _starting(ctx, busy)
        done = _Wave(busy, ctx, None).wait(tally)  # one at a time
        busy = [d.action for d in done if d.busy is not None]
        with ctx.registry.transaction():
            recorded = _record(ctx, done)
            failed = sum(o.failed for o in recorded)
            failures += failed
            record(ctx, "wave", None, OK, duration_ms=timer.ms, retry=round_,
                   tenants=[d.action.tenant for d in done], failed=failed, failures=failures,
                   still_busy=[a.tenant for a in busy])
        out.extend(recorded)
    for action in busy:
        outcome = Outcome(action.tenant, "migrate", RETRY, action.from_version, action.to_version,
                          error="tenant stayed busy (an application holds its write lock); "
                          "retried next pass")
        with ctx.registry.transaction():
            record(ctx, action, action.tenant, outcome, level="warning")
        out.append(outcome)
    return out, failures


class _Wave:
    """A wave in flight: its tenants submitted to a pool, or (without one) migrated
    one by one on the calling thread when it is waited for."""

    def __init__(self, actions: list[Action], ctx: Context,
                 pool: ThreadPoolExecutor | None) -> None:
        take = ctx.desired.settings.rollout.snapshot
        timeout = ctx.desired.settings.busy_timeout
        txn = ctx.desired.settings.rollout.transaction
        mark = putback.marker(ctx, actions)
        self.calls = [partial(migrate_one, a, ctx.catalog, timeout, take, ctx.stop_now, txn,
                              mark) for a in actions]
        self.futures = None if pool is None else [pool.submit(c) for c in self.calls]

    def wait(self, tally: _Tally) -> list[_Done]:
        """Every tenant's result, in wave order, counting progress as each finishes."""
        if self.futures is None:
            out = []
            for call in self.calls:
                out.append(call())
                tally.finished(out[-1])
            return out
        # as_completed waits on each future once; a loop of wait(FIRST_COMPLETED) over
        # the rest re-arms every pending future each time: quadratic in the wave size
        for f in as_completed(self.futures):
            tally.finished(f.result())
        return [f.result() for f in self.futures]


def migrate_one(action: Action, catalog: Catalog, busy_timeout: float, take: bool,
                stop_now: Callable[[], bool] = context.never,
                transaction: str = "step", marker: putback.Marker | None = None) -> _Done:
    """Worker: migrate, health-check and (on failure) restore one tenant. Touches only
    this tenant's file and its snapshot (and asks Litestream for its position, with
    ``marker``); never the registry or the log."""
    assert action.path is not None and action.to_version is not None
    timer = Timer()
    start = action.from_version or 0
    if stop_now():
        return _Done(action, None, 0, not_started=True)
    try:
        conn = tenantdb.connect(action.path, busy_timeout)
    except sqlite3.Error as exc:
        return _Done(action, tenantdb.MigrateResult(start, start, (),
                                                    f"{type(exc).__name__}: {exc}"), timer.ms)
    steps: steprun.StepConnection | None = None  # runs the steps; takes and restores the copy
    put: putback.ReplicaMark | None = None
    try:
        steps = steprun.open_step(action.path, busy_timeout)
        if steps.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            # Steps need no fsync each: a WAL file stays consistent at the last synced
            # commit, and closing the connection checkpoints (and syncs) them all. The
            # worst a power cut can do is leave the tenant at an earlier step, which the
            # next pass observes and migrates again — never a torn version.
            steps.execute("PRAGMA synchronous = NORMAL")
            steps.remember_defaults()
        copy = _take(steps, action, busy_timeout) if take else None
        mark, no_mark = _mark(steps, action, marker) if marker and not take else (None, "")
        context.crash_point("rollout:after-snapshot")
        result = tenantdb.migrate_conn(steps, catalog, action.to_version, stop_now, transaction)
        context.crash_point("rollout:after-migrate")
        if result.error is None and not result.stopped:  # stopped: gated when it finishes
            problem = health_gate(conn, result.to_version, catalog)
            if problem is not None:
                result = replace(result, error=f"health gate: {problem}")
        if result.error is not None and copy is not None:
            result = _restore(steps, copy, result, busy_timeout)
        elif result.error is not None and marker is not None and result.to_version != start:
            if mark is None:
                result = replace(result, error=f"{result.error}; not put back from the "
                                 f"replica: no position was recorded ({no_mark})")
            elif int(steps.execute("PRAGMA data_version").fetchone()[0]) != mark.data_version:
                result = replace(result, error=f"{result.error}; not put back from the "
                                 "replica: an application wrote to the tenant during the "
                                 f"migration (its position before: txid {mark.txid}, "
                                 f"{mark.when})")
            else:
                put = mark
        elif result.error is not None and snapshot.path_for(action.path).exists():
            result = replace(result, error=f"{result.error}; a snapshot from an earlier, "
                             f"interrupted attempt is kept at {snapshot.path_for(action.path)}"
                             " (not restored: the tenant may have changed since)")
    except RetryableError as exc:
        return _Done(action, None, timer.ms, busy=str(exc))
    except (OSError, sqlite3.Error) as exc:
        if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
            return _Done(action, None, timer.ms, busy=str(exc))
        result = tenantdb.MigrateResult(start, _version(conn, start), (),
                                        f"{type(exc).__name__}: {exc}")
    finally:
        if steps is not None:
            steps.close()
        conn.close()
    return _Done(action, result, timer.ms, put_back=put)


def _mark(conn: sqlite3.Connection, action: Action, marker: putback.Marker
          ) -> tuple[putback.ReplicaMark | None, str]:
    """The replica's position before the first step (Litestream synced it), with the
    ``data_version`` that later tells whether an application wrote since; none when
    the file is already at its target (a retry after a busy health gate)."""
    assert action.to_version is not None
    if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= action.to_version:
        return None, "already at its target"
    mark, why = marker(action, time.time())
    if mark is None:
        return None, why
    return replace(mark, data_version=int(conn.execute("PRAGMA data_version").fetchone()[0])
                   ), ""


def _version(conn: sqlite3.Connection, default: int) -> int:
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error:
        return default


def _take(conn: sqlite3.Connection, action: Action, busy_timeout: float
          ) -> snapshot.Copy | None:
    """Copy the tenant before its first step, under a read transaction (so a busy
    file gives up after ``busy_timeout`` instead of waiting forever); no copy when the
    file is already at its target (a retry after a busy health gate)."""
    assert action.path is not None and action.to_version is not None
    try:
        conn.execute("BEGIN")
        current = int(conn.execute("PRAGMA user_version").fetchone()[0])
        copy = snapshot.take(conn, action.path) if current < action.to_version else None
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if is_busy(exc):
            raise RetryableError(f"busy while taking the snapshot: {exc}") from exc
        raise
    return copy


def _restore(conn: sqlite3.Connection, copy: snapshot.Copy, result: tenantdb.MigrateResult,
             busy_timeout: float) -> tenantdb.MigrateResult:
    why = snapshot.restore(conn, copy, busy_timeout)
    if why is not None:
        return replace(result, error=f"{result.error}; {why}")
    return tenantdb.MigrateResult(result.from_version, result.from_version, (),
                                  f"{result.error}; restored from its snapshot "
                                  f"(v{result.from_version})")


def health_gate(conn: sqlite3.Connection, version: int, catalog: Catalog) -> str | None:
    """``PRAGMA quick_check``, ``PRAGMA foreign_key_check`` and every check up to
    ``version``: None when healthy.

    A busy file raises ``RetryableError`` (its health is unknown, not bad)."""
    try:
        bad = tenantdb.check(conn, "quick_check")
        if bad is not None:
            return f"quick_check: {bad}"
        orphans = steprun.foreign_key_violations(conn)
        if orphans:
            return f"foreign_key_check: {orphans}"
        for check in catalog.checks_up_to(version):
            for st in check.statements:
                try:
                    row = conn.execute(st.sql).fetchone()
                except sqlite3.OperationalError as exc:
                    if is_busy(exc):
                        raise
                    return f"{check.path.name}:{st.line}: {exc}"
                except sqlite3.Error as exc:
                    return f"{check.path.name}:{st.line}: {exc}"
                if row is not None:
                    return f"{check.path.name}:{st.line} returned rows (first: {tuple(row)!r})"
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise RetryableError(f"busy during the health gate: {exc}") from exc
        return f"quick_check: {exc}"
    return None


def mark_failed(ctx: Context, action: Action, version: int, error: str) -> None:
    """Registry bookkeeping for a failed tenant (caller holds a transaction)."""
    row = ctx.registry.tenant(action.tenant)
    failures = (row.failures if row is not None and row.failed_key == action.key else 0) + 1
    ctx.registry.update_tenant(action.tenant, schema_version=version, status="failed",
                               failure=error[:500], failed_key=action.key, failures=failures,
                               retry_at=time.time() + backoff(failures))


def record_applied(ctx: Context, versions: Iterable[int]) -> None:
    for v in versions:
        m = ctx.catalog.migrations[v - 1]
        ctx.registry.record_migration(m.version, m.name, m.sha256)


def record_migrated(ctx: Context, action: Action, result: tenantdb.MigrateResult,
                    duration_ms: int) -> Outcome:
    """Registry bookkeeping and event for one tenant's migration (ok or failed).

    The caller holds a transaction (one per wave)."""
    ok = result.error is None
    detail: dict[str, Any] = {"applied": list(result.applied), "target": action.to_version}
    if result.stopped:
        # a committed intermediate version: the planner migrates it on from there
        outcome = Outcome(action.tenant, "migrate", PENDING, result.from_version,
                          result.to_version, duration_ms,
                          f"stopped at once after v{result.to_version} (second signal); "
                          "the next pass continues", detail=detail)
        record_applied(ctx, result.applied)
        ctx.registry.update_tenant(action.tenant, schema_version=result.to_version,
                                   status="pending")
        record(ctx, action, action.tenant, outcome, level="warning")
        return outcome
    outcome = Outcome(action.tenant, "migrate", OK if ok else FAILED, result.from_version,
                      result.to_version, duration_ms, result.error, detail=detail)
    record_applied(ctx, result.applied)
    if ok:
        ctx.registry.update_tenant(action.tenant, schema_version=result.to_version,
                                   status="active", failure=None, failed_key=None,
                                   failures=0, retry_at=None)
    else:
        mark_failed(ctx, action, result.to_version, result.error or "failed")
    record(ctx, action, action.tenant, outcome)
    return outcome
