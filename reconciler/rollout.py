"""Rolling migrations: canary first, then waves, a health gate after each, a halt switch.

Why: a schema change that breaks on some customer's data must stop after a handful of
tenants, not after ten thousand (DESIGN §6). Waves are computed by the planner
(deterministic, sorted by name); this module runs them.

Threading model: workers only touch their own tenant file (``tenantdb`` opens its own
connection; SQLite releases the GIL while it works). Every registry write and every
log line happens on the calling thread, in wave order, so the registry has one writer
and ``parallel: N`` ends in exactly the state of ``parallel: 1``.
"""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconciler import tenantdb
from reconciler.context import FAILED, OK, PENDING, RETRY, Context, Outcome, Timer, record
from reconciler.errors import RetryableError
from reconciler.plan import Action

BACKOFF_BASE = 30.0
BACKOFF_CAP = 3600.0
BUSY_ROUNDS = 3  # how often a busy tenant is retried later in the same pass


@dataclass(frozen=True)
class _Done:
    action: Action
    result: tenantdb.MigrateResult | None
    duration_ms: int
    busy: str | None = None


def backoff(failures: int) -> float:
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, failures - 1)))


def run(actions: list[Action], waves: tuple[tuple[str, ...], ...], ctx: Context
        ) -> tuple[list[Outcome], bool, bool]:
    """Migrate ``actions`` wave by wave. Returns (outcomes, halted, stopped)."""
    by_name = {a.tenant: a for a in actions}
    ordered = [[n for n in wave if n in by_name] for wave in waves]
    ordered = [w for w in ordered if w]
    settings = ctx.desired.settings.rollout
    outcomes: list[Outcome] = []
    failures = 0
    busy: list[Action] = []
    total = len(by_name)
    halted = stopped = False
    for number, wave in enumerate(ordered, start=1):
        if halted or stopped or ctx.stop():
            stopped = stopped or not halted
            outcomes.extend(_pending(by_name[n], "rollout halted" if halted else "stopping")
                            for n in wave)
            continue
        timer = Timer()
        done = _migrate_wave([by_name[n] for n in wave], ctx, settings.parallel)
        wave_failed = 0
        for d in done:
            if d.busy is not None:
                busy.append(d.action)
                continue
            assert d.result is not None
            outcome = record_migrated(ctx, d.action, d.result, d.duration_ms)
            outcomes.append(outcome)
            wave_failed += outcome.failed
        failures += wave_failed
        if ctx.progress is not None:
            ctx.progress("migrate", len(outcomes), total, failures)
        halted = failures > settings.max_failures
        with ctx.registry.transaction():
            record(ctx, "wave", None, FAILED if halted else OK, duration_ms=timer.ms,
                   wave=number, waves=len(ordered), tenants=list(wave), failed=wave_failed,
                   failures=failures, max_failures=settings.max_failures, halted=halted)
    outcomes.extend(_retry_busy(busy, ctx, halted))
    return outcomes, halted, stopped


def _pending(action: Action, why: str) -> Outcome:
    return Outcome(action.tenant, "migrate", PENDING, action.from_version, action.to_version,
                   error=why)


def _retry_busy(busy: list[Action], ctx: Context, halted: bool) -> list[Outcome]:
    out: list[Outcome] = []
    for round_ in range(BUSY_ROUNDS):
        if not busy or halted or ctx.stop():
            break
        time.sleep(min(1.0, 0.2 * (round_ + 1)))
        still: list[Action] = []
        for d in _migrate_wave(busy, ctx, 1):
            if d.busy is not None:
                still.append(d.action)
            else:
                assert d.result is not None
                out.append(record_migrated(ctx, d.action, d.result, d.duration_ms))
        busy = still
    for action in busy:
        outcome = Outcome(action.tenant, "migrate", RETRY, action.from_version, action.to_version,
                          error="tenant stayed busy (an application holds its write lock); "
                          "retried next pass")
        with ctx.registry.transaction():
            record(ctx, action, action.tenant, outcome, level="warning")
        out.append(outcome)
    return out


def _migrate_wave(actions: list[Action], ctx: Context, parallel: int) -> list[_Done]:
    if parallel <= 1 or len(actions) <= 1:
        return [_migrate_one(a, ctx) for a in actions]
    with ThreadPoolExecutor(max_workers=min(parallel, len(actions))) as pool:
        return list(pool.map(lambda a: _migrate_one(a, ctx), actions))


def _migrate_one(action: Action, ctx: Context) -> _Done:
    """Worker: touches only this tenant's file."""
    assert action.path is not None and action.to_version is not None
    timer = Timer()
    timeout = ctx.desired.settings.busy_timeout
    try:
        result = tenantdb.migrate_file(action.path, ctx.catalog, action.to_version, timeout)
        if result.error is None and result.applied:
            problem = health_gate(action, result.to_version, ctx)
            if problem is not None:
                result = tenantdb.MigrateResult(result.from_version, result.to_version,
                                                result.applied, f"health gate: {problem}")
    except RetryableError as exc:
        return _Done(action, None, timer.ms, busy=str(exc))
    except (OSError, sqlite3.Error) as exc:
        v = action.from_version or 0
        result = tenantdb.MigrateResult(v, v, (), f"{type(exc).__name__}: {exc}")
    return _Done(action, result, timer.ms)


def health_gate(action: Action, version: int, ctx: Context) -> str | None:
    """``PRAGMA quick_check`` plus every check up to ``version``: None when healthy."""
    assert action.path is not None
    timeout = ctx.desired.settings.busy_timeout
    problem = tenantdb.quick_check(action.path, timeout)
    if problem is not None:
        return f"quick_check: {problem}"
    checks = ctx.catalog.checks_up_to(version)
    if not checks:
        return None
    conn = tenantdb.connect(action.path, timeout)
    try:
        for check in checks:
            for st in check.statements:
                try:
                    row = conn.execute(st.sql).fetchone()
                except sqlite3.Error as exc:
                    return f"{check.path.name}:{st.line}: {exc}"
                if row is not None:
                    return f"{check.path.name}:{st.line} returned rows (first: {tuple(row)!r})"
    finally:
        conn.close()
    return None


def mark_failed(ctx: Context, action: Action, version: int, error: str) -> None:
    """Registry bookkeeping for a failed tenant (caller holds a transaction)."""
    row = ctx.registry.tenant(action.tenant)
    failures = (row.failures if row is not None and row.failed_key == action.key else 0) + 1
    ctx.registry.update_tenant(action.tenant, schema_version=version, status="failed",
                               failure=error[:500], failed_key=action.key, failures=failures,
                               retry_at=time.time() + backoff(failures))


def record_applied(ctx: Context, versions: tuple[int, ...]) -> None:
    for v in versions:
        m = ctx.catalog.migrations[v - 1]
        ctx.registry.record_migration(m.version, m.name, m.sha256)


def record_migrated(ctx: Context, action: Action, result: tenantdb.MigrateResult,
                    duration_ms: int) -> Outcome:
    """Registry bookkeeping and event for one tenant's migration (ok or failed)."""
    ok = result.error is None
    outcome = Outcome(action.tenant, "migrate", OK if ok else FAILED, result.from_version,
                      result.to_version, duration_ms, result.error,
                      detail={"applied": list(result.applied), "target": action.to_version})
    with ctx.registry.transaction():
        record_applied(ctx, result.applied)
        if ok:
            ctx.registry.update_tenant(action.tenant, schema_version=result.to_version,
                                       status="active", failure=None, failed_key=None,
                                       failures=0, retry_at=None)
        else:
            mark_failed(ctx, action, result.to_version, result.error or "failed")
        record(ctx, action, action.tenant, outcome)
    return outcome
