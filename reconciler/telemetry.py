"""The daemon's observability shell: after each pass, publish metrics and notify.

Why a module of its own: ``daemon`` decides when passes run; what the outside world
learns about them (``/metrics``, ``/readyz``, webhooks — issue 16) is a separate
concern with its own threads, so the daemon makes two calls (``pass_starting``,
``pass_finished``) and knows nothing more about it.

Invariants:
* called from the daemon's main thread only, between passes: reading the registry
  here (two aggregate queries, read-only) happens after a pass, never during one;
* a failure here (registry unreadable, lock held for the dedup record, webhook down)
  is logged and never propagates into the daemon loop;
* the HTTP endpoint and the webhook sender run in their own threads and read only
  immutable snapshots.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path
from types import MappingProxyType

from reconciler import engine
from reconciler.apply import Result
from reconciler.context import OK, Logger
from reconciler.errors import LockHeld, ReconcileError
from reconciler.health import Endpoint
from reconciler.lock import FleetLock
from reconciler.metrics import (
    Board,
    DaemonFacts,
    FleetMetrics,
    Targets,
    gather,
    rollout_key,
)
from reconciler.registry import Registry
from reconciler.webhooks import (
    Notice,
    Webhooks,
    finished_notice,
    fleet_conditions,
    problem_notice,
)


class Telemetry:
    def __init__(self, log: Logger, config: Path, metrics_addr: str | None = None) -> None:
        """Raises ``PermanentError`` when ``metrics_addr`` is bad or cannot be bound."""
        self.log = log
        self.config = config
        self.board = Board()
        self.fleet: FleetMetrics | None = None
        self.inputs: engine.Inputs | None = None
        self._key: tuple[engine.Inputs, str] | None = None
        self._targets: tuple[engine.Inputs, Targets] | None = None
        self._passes: Counter[str] = Counter()
        self._last_end: float | None = None
        self._last_ok = False
        self._started: float | None = None
        self._interval = 60.0
        self._valid = True
        self._pull_ok = True
        self.webhooks: Webhooks | None = None
        self._unsaved: tuple[dict[str, str], set[str]] = ({}, set())
        self.endpoint = (Endpoint(metrics_addr, self.board, self._central).start()
                         if metrics_addr is not None else None)
        if self.endpoint is not None:
            log.info("serving /metrics, /livez and /readyz", url=self.endpoint.url)

    def _central(self) -> Path | None:
        return self.inputs.desired.settings.central if self.inputs is not None else None

    def _rollout_key(self) -> str:
        """The plan's rollout key, computed once per desired state (it hashes it all)."""
        inputs = self.inputs
        assert inputs is not None
        if self._key is None or self._key[0] is not inputs:
            self._key = (inputs, rollout_key(inputs.desired, inputs.catalog))
        return self._key[1]

    # ------------------------------------------------------------------ daemon calls
    def pass_starting(self) -> None:
        self._started = time.time()
        self._publish()

    def pass_finished(self, inputs: engine.Inputs | None, result: Result | None, *,
                      interval: float, problem: str | None, pull_problem: str | None) -> None:
        """After a pass (``result`` None: it could not run, or none was possible).
        Never raises: what the outside world is told must not stop the reconciling."""
        try:
            self._after_pass(inputs, result, interval, problem, pull_problem)
        except Exception as exc:  # a fault here must not take the daemon down
            self.log.error("metrics or notifications not updated",
                           error=f"{type(exc).__name__}: {exc}")

    def _after_pass(self, inputs: engine.Inputs | None, result: Result | None,
                    interval: float, problem: str | None, pull_problem: str | None) -> None:
        now = time.time()
        self._started = None
        self._interval = interval
        self._valid, self._pull_ok = problem is None, pull_problem is None
        if inputs is not None:
            same = self.inputs is None or \
                self.inputs.desired.settings.central == inputs.desired.settings.central
            self.inputs = inputs
            self._passes["completed" if result is not None else "not_run"] += 1
            self._last_end, self._last_ok = now, result is not None
            try:
                if self._targets is None or self._targets[0] is not inputs:
                    self._targets = (inputs, Targets.of(inputs.desired, inputs.catalog.latest))
                self.fleet = gather(inputs.desired, inputs.catalog, inputs.revision,
                                    self.fleet if same else None, self._rollout_key,
                                    self._targets[1])
            except sqlite3.Error as exc:
                self.log.warning("metrics not updated: the registry cannot be read",
                                 error=str(exc))
        self._publish()
        try:
            self._notify(result, problem, pull_problem)
        except (sqlite3.Error, OSError, ReconcileError) as exc:
            self.log.warning("notifications not evaluated: the registry cannot be read",
                             error=str(exc))

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        if self.webhooks is not None:
            self.webhooks.close()

    # ------------------------------------------------------------------ internals
    def _publish(self) -> None:
        facts = DaemonFacts(
            interval=self._interval, desired_valid=self._valid, pull_ok=self._pull_ok,
            last_attempt_end=self._last_end, last_attempt_ok=self._last_ok,
            passes=MappingProxyType(dict(self._passes)), pass_started=self._started,
            notifications=MappingProxyType(self.webhooks.counts() if self.webhooks else {}))
        self.board.publish(self.fleet, facts)

    def _notify(self, result: Result | None, problem: str | None,
                pull_problem: str | None) -> None:
        inputs = self.inputs
        if inputs is None or not inputs.desired.settings.notify:
            return
        central = inputs.desired.settings.central
        if self.webhooks is None:
            self.webhooks = Webhooks(self.log, self.config.parent.name or str(self.config))
        hooks = self.webhooks
        if hooks.notified is None:
            with Registry.reading(central) as reg:
                hooks.notified = reg.notified() if reg is not None else {}
        notices: list[Notice] = fleet_conditions(central, self._rollout_key)
        if problem is not None:
            notices.append(problem_notice("desired_state_invalid", problem))
        if pull_problem is not None:
            notices.append(problem_notice("git_pull_refused", pull_problem))
        fleet = self.fleet
        if (result is not None and fleet is not None and not fleet.halted
                and fleet.at_target == fleet.declared
                and any(o.action == "migrate" and o.outcome == OK for o in result.outcomes)):
            notices.append(finished_notice(inputs.revision, fleet.target, fleet.declared))
        added, removed = hooks.update(notices, inputs.desired.settings.notify)
        self._save(central, added, removed)

    def _save(self, central: Path, added: dict[str, str], removed: set[str]) -> None:
        """Record the notified keys in the registry (under the fleet lock, without
        waiting: when a pass holds it, they are saved after the next update)."""
        pending_add, pending_remove = self._unsaved
        pending_add = {k: e for k, e in pending_add.items() if k not in removed} | added
        pending_remove = (pending_remove - set(added)) | removed
        if not (pending_add or pending_remove):
            return
        self._unsaved = (pending_add, pending_remove)
        lock = FleetLock(central)
        try:
            lock.acquire(wait=False)
        except LockHeld:
            return
        try:
            reg = Registry.open(central)
            try:
                reg.set_notified(pending_add, pending_remove)
            finally:
                reg.close()
            self._unsaved = ({}, set())
        except (ReconcileError, OSError, sqlite3.Error) as exc:
            self.log.warning("notified conditions not recorded (they may be sent again "
                             "after a restart)", error=str(exc))
        finally:
            lock.release()
