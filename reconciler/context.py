"""What an action needs to run, and how its outcome is recorded.

Why: every action (create, migrate, relocate, archive, …) must leave the same trace —
one structured log event and one row in ``events`` with tenant, action, versions,
duration and the desired-state revision — and must be able to stop cleanly when the
daemon is asked to: ``stop`` between actions, ``stop_now`` between transactions
(an action may then end half-way, at a committed, journaled point the next pass
continues from — reported as ``pending``). Keeping that in one place makes the action
modules small and makes the trace impossible to forget.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.actions import Action
from reconciler.desired import Desired
from reconciler.migrations import Catalog
from reconciler.registry import Registry

Logger = Any  # a structlog bound logger

OK, FAILED, RETRY, SKIPPED, REPORTED, PENDING = (
    "ok", "failed", "retry", "skipped", "reported", "pending")


def never() -> bool:
    """The default stop flag: never set."""
    return False


@dataclass(frozen=True)
class Context:
    desired: Desired
    catalog: Catalog
    registry: Registry
    revision: str
    log: Logger
    stop: Callable[[], bool] = never  # checked between actions, never inside one
    retry_failed: bool = False
    progress: Callable[[str, int, int, int], None] | None = None  # (phase, done, total, failed)
    # checked between transactions, also inside an action (after each committed
    # migration step, between journaled phases): the daemon's second signal
    stop_now: Callable[[], bool] = never

    def stopping(self) -> bool:
        """No new action may start (a graceful stop, or a stop-now)."""
        return self.stop() or self.stop_now()


@dataclass(frozen=True)
class Outcome:
    tenant: str
    action: str
    outcome: str  # ok | failed | retry | skipped | reported | pending
    from_version: int | None = None
    to_version: int | None = None
    duration_ms: int = 0
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.outcome == FAILED


class Timer:
    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def ms(self) -> int:
        return int((time.monotonic() - self.start) * 1000)


def record(ctx: Context, action: Action | str, tenant: str | None, outcome: Outcome | str, *,
           duration_ms: int = 0, level: str = "info", **detail: Any) -> None:
    """Log one event and insert it into ``events`` (caller may hold a transaction)."""
    kind = action if isinstance(action, str) else action.kind.value
    result = outcome if isinstance(outcome, str) else outcome.outcome
    fields: dict[str, Any] = {k: v for k, v in detail.items() if v is not None}
    if isinstance(outcome, Outcome):
        fields.setdefault("from_version", outcome.from_version)
        fields.setdefault("to_version", outcome.to_version)
        if outcome.error:
            fields.setdefault("error", outcome.error)
        fields.update({k: v for k, v in outcome.detail.items() if v is not None})
        duration_ms = duration_ms or outcome.duration_ms
    fields = {k: v for k, v in fields.items() if v is not None}
    ctx.registry.event(revision=ctx.revision, tenant=tenant, action=kind, outcome=result,
                       detail=fields, duration_ms=duration_ms)
    if result == FAILED and level == "info":
        level = "error"
    getattr(ctx.log, level)(kind, tenant=tenant, outcome=result, duration_ms=duration_ms,
                            revision=ctx.revision, **fields)


def crash_point(name: str) -> None:
    """Test-only: die by SIGKILL at a named point when RECONCILE_CRASH_AT names it, or
    create the file ``PATH`` there when RECONCILE_MARK_AT is ``name:PATH`` (a test then
    acts at that exact point, e.g. holds the next commit's fsync, see
    tests/e2e/hold_wal_sync.c).

    Inert unless those variables are set, which only the crash-safety tests do."""
    if os.environ.get("RECONCILE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    mark = os.environ.get("RECONCILE_MARK_AT")
    if mark is not None and mark.startswith(name + ":"):
        with open(mark[len(name) + 1:], "a"):
            pass
