"""``reconcile daemon``: keep the fleet converged, as a systemd service.

Why: operators commit a change to ``tenants.yaml`` and expect every database to match
minutes later, with every step in the journal, and drift made behind the reconciler's
back to be undone. This module is the loop around ``engine.run_pass``: it decides
*when* to run a pass; what a pass does lives in the engine, shared with the one-shot
command.

When a pass runs: at start; after ``tenants.yaml`` or ``migrations/`` changed
(watchfiles, watching the parent directories because editors and git replace files by
rename; debounced: ``inputwatch``); every ``settings.interval`` (resync, and in pull mode a fetch +
fast-forward first); on SIGHUP (re-read everything now); when a failed tenant's
backoff expires; shortly after a pass that could not run (lock held, registry busy).

Invariants:
* idle costs nothing but the file watcher's sleep loop: the main thread sleeps in
  ``select`` on a self-pipe that signals and the watcher thread write to;
* only a valid desired state is ever applied: a load that fails keeps the last valid
  ``Inputs`` (its migrations were compiled at load time, so later edits to the files
  cannot leak in), logs every problem with file:line:column, puts it in ``STATUS=``
  and in the pass summary stored in the registry, and is retried on the next change;
* in pull mode only committed states are applied: a working tree with local edits is
  refused like an invalid file, and the git work tree is only ever fast-forwarded; an
  invalid head is reported and the newest valid commit before it applied (``lastvalid``);
* SIGTERM/SIGINT stop between actions (an action in flight completes), exit 0;
* a second one stops right after the transaction in flight commits: no new transaction
  starts — a migration ends after its current step (the file and the registry both at
  that step's version, the tenant ``pending``), a relocation, archive or restore at its
  next journaled phase, a rollout wave starts no more tenants (with ``parallel`` > 1
  each worker stops after its own current step) — then the pass records what finished
  and the process exits 128+signal (143 for SIGTERM, which the unit counts as success:
  nothing is half done, and the next pass continues from the committed state);
* a third one, while a pass runs, raises ``ForcedStop`` in the main thread at once:
  the transaction in progress rolls back (every step is its own transaction, phases
  are journaled) and the process exits 128+signal — the operator's last resort, for
  a step that will not finish (worker threads cannot be interrupted: their current
  step still ends first);
* ``WATCHDOG=1`` comes from its own thread, so a long pass does not get the service
  killed; the thread stops pinging if the main thread dies;
* after each pass (or one that could not run) ``telemetry`` publishes metrics and
  queues webhooks (issue 16) — between passes, never raising into this loop.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from reconciler import engine, follow, gitpull, lastvalid, lock, replicators
from reconciler.apply import Result
from reconciler.backup import registry_url
from reconciler.context import Logger
from reconciler.desired import GitSettings
from reconciler.errors import InvalidInput, LockHeld, Problem, ReconcileError
from reconciler.inputwatch import Watcher, WatchSet
from reconciler.notify import Notifier, Watchdog, watchdog_interval
from reconciler.registry import Registry
from reconciler.revision import revision as revision_of
from reconciler.revision import short
from reconciler.telemetry import Telemetry

DEFAULT_INTERVAL = 60.0
RETRY_MIN, RETRY_MAX = 2.0, 60.0  # re-run after a pass that could not run
PROGRESS_EVERY = 1.0  # seconds between STATUS= updates during a pass
#: seconds between looks whether Litestream stopped on a commit its writer never
#: finished (replication.unstick: one read of each replicated file's -shm, 7 µs per
#: file measured by `python -m bench --only walcheck`) — every pass for a fleet of up to
#: WAL_CHECK_ALWAYS tenants (~7 ms a pass)
WAL_CHECK_EVERY = 30.0
WAL_CHECK_ALWAYS = 1000


class ForcedStop(BaseException):
    """A third SIGTERM/SIGINT during a pass: leave now. BaseException so that no
    ``except Exception`` in an action mistakes it for that action failing."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Daemon:
    def __init__(self, config: Path, log: Logger, *, git_pull: bool = False,
                 notifier: Notifier | None = None, metrics_addr: str | None = None,
                 region: str | None = None) -> None:
        self.config = config.resolve()
        self.region = region  # issue 15: the one region this agent acts on (None: all)
        self.log = log
        self.metrics_addr = metrics_addr  # issue 16: /metrics, /livez, /readyz
        self.telemetry: Telemetry | None = None
        self.notifier = notifier or Notifier.from_env()
        self.git_pull = git_pull
        self.inputs: engine.Inputs | None = None  # the last valid desired state
        self.problem: str | None = None  # why the current files are not applied
        self.pull_problem: str | None = None
        self._recorded_pull: str | None = None
        self.summary = "starting"
        self.stop_signal: int | None = None  # the first SIGTERM/SIGINT: graceful
        self.stop_now_signal: int | None = None  # the second: after this transaction
        self._stop_now_logged = False
        self.hup = False
        self.in_pass = False
        self._stop_logged = False
        self.next_resync = 0.0
        self.next_retry: float | None = None
        self._failures = 0  # passes in a row that could not run
        self._signature: tuple[Any, ...] = ()
        self._watcher: Watcher | None = None
        self._last_progress = 0.0
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._replication: replicators.Supervisor | None = None  # Litestream (issue 14)
        # issue 15: this agent's row in its registry, and the other regions' registries
        self._heartbeat = follow.Heartbeat(Path(), region, log)  # replaced once loaded
        self._wal_checked = -WAL_CHECK_EVERY  # monotonic s: replication.unstick's look
        self._followers = follow.Followers(log)

    # ------------------------------------------------------------------ settings
    @property
    def watch_set(self) -> WatchSet:
        migrations = (self.inputs.desired.settings.migrations_dir if self.inputs is not None
                      else self.config.parent / "migrations")
        return WatchSet(self.config, migrations.resolve())

    @property
    def interval(self) -> float:
        return self.inputs.desired.settings.interval if self.inputs else DEFAULT_INTERVAL

    @property
    def git(self) -> GitSettings | None:
        configured = self.inputs.desired.settings.git if self.inputs else None
        if configured is not None:
            return configured
        return GitSettings() if self.git_pull else None

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        """The service's life: returns the exit code."""
        previous = self._install_signals()
        watchdog = None
        every = watchdog_interval(os.environ)
        if every is not None and self.notifier.enabled:
            watchdog = Watchdog(self.notifier, every).start()
        code = 0
        try:
            self.log.info("daemon starting", config=str(self.config), pid=os.getpid(),
                          pull=self.git is not None or self.git_pull)
            self.telemetry = Telemetry(self.log, self.config, self.metrics_addr)
            self._load()
            self._ensure_peers()  # first: it creates the registry Litestream replicates
            self._ensure_replication()
            self.notifier.ready()
            self._cycle(start=True)
            while self.stop_signal is None:
                self._wait(self._timeout())
                if self.stop_signal is None:
                    self._cycle(start=False)
            self._stopping()  # logs why
            if self.stop_now_signal is not None:
                self._stopping_now()  # logs it, if no check in the pass did
                code = 128 + self.stop_now_signal
                self.log.warning("stopped after the transaction in flight committed; the "
                                 "next pass continues from there",
                                 signal=signal.Signals(self.stop_now_signal).name)
        except ForcedStop as exc:
            code = 128 + exc.signum
            self.log.warning("stopped at once by a third signal: the transaction in "
                             "progress was rolled back; the next pass completes the work",
                             signal=str(exc))
        finally:
            reason = (signal.Signals(self.stop_signal).name if self.stop_signal else "error")
            self.notifier.stopping(f"stopping ({reason}); last: {self.summary}")
            if self._replication is not None:
                self._replication.stop()
            self._heartbeat.stop()
            self._followers.stop()
            if self._watcher is not None:
                self._watcher.stop()
            if watchdog is not None:
                watchdog.stop()
            if self.telemetry is not None:
                self.telemetry.close()
            self._restore_signals(previous)
            os.close(self._rfd)
            os.close(self._wfd)
            self.notifier.close()
        self.log.info("daemon stopped", exit_code=code)
        return code

    def _cycle(self, start: bool) -> None:
        """Work out why we woke up, then reload/pull/pass as needed."""
        changed = self._drain_watcher()
        now = time.monotonic()
        hup, self.hup = self.hup, False
        periodic = start or hup or now >= self.next_resync
        retry = self.next_retry is not None and now >= self.next_retry
        if not (changed or periodic or retry):
            return
        if retry:
            self.next_retry = None  # the pass below schedules the next one
        reasons = [r for r, on in (("start", start), ("SIGHUP", hup), ("change", changed),
                                   ("resync", periodic and not start and not hup),
                                   ("retry", retry)) if on]
        if hup:
            self.notifier.reloading()
            self.log.info("SIGHUP: re-reading everything")
        reload = bool(changed) or hup
        if self.git is not None and periodic:
            reload |= self._pull()
        if not reload and periodic and self.watch_set.signature() != self._signature:
            reload = True  # the watcher missed something (or could not watch)
        if reload:
            self._load()
            self._ensure_peers()  # first: it creates the registry Litestream replicates
            self._ensure_replication()
        if hup:
            self.notifier.ready()
        if periodic:
            self.next_resync = time.monotonic() + self.interval
        self._ensure_watcher()
        if self.inputs is not None and self.stop_signal is None:
            self._pass(", ".join(reasons))
        else:
            self._notify_status()
            if self.stop_signal is None:
                self._observed(None)

    # ------------------------------------------------------------------ backups
    def _ensure_replication(self) -> None:
        """Litestream runs as our child while settings.backup is on; a changed
        ``settings.backup`` (or data location) restarts it with the new config."""
        settings = self.inputs.desired.settings if self.inputs is not None else None
        running = self._replication
        tenants = len(self.inputs.desired.tenants) if self.inputs is not None else 0
        if running is not None and settings is not None and running.settings == settings \
                and running.fits(settings, tenants):
            return
        if running is not None:
            if settings is not None and settings.backup == running.settings.backup and \
                    settings.central == running.settings.central and \
                    running.fits(settings, tenants):
                running.settings = settings
                return
            running.stop()
            self._replication = None
        if settings is not None and settings.backup is not None:
            revision = self.inputs.revision if self.inputs is not None else ""
            self._replication = replicators.Supervisor(
                settings, self.log, lambda what, detail: self._record(
                    "backup", what, revision, **detail), tenants,
                registry=None if self.region is None else
                registry_url(settings.backup.replica, self.region)).start()
            self._replication.wait_ready(10.0)  # the first pass sees it replicating

    def _ensure_peers(self) -> None:
        """Issue 15: a region agent keeps its heartbeat beating (its ``agent`` row and the
        declared regions) and follows every other region's registry. A single host
        serving every region needs none of it: no pass of its writes an agent row (its
        events name ``*@<host>`` without one), so its no-op pass writes nothing more."""
        inputs = self.inputs
        if inputs is None or self.region is None:
            return
        whole = inputs.whole or inputs.desired
        settings = whole.settings
        if not settings.central.exists():
            self._create_registry(settings.central)  # Litestream replicates it from start
        if self._heartbeat.central != settings.central:
            self._heartbeat.stop()
            self._heartbeat = follow.Heartbeat(settings.central, self.region,
                                               self.log).start()
        self._heartbeat.update(inputs.revision, follow.region_rows(whole, self.region))
        self._heartbeat.write(time.time())
        self._followers.update(settings, [r for r in whole.regions if r != self.region])

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        """Read tenants.yaml + migrations; keep the last valid state on any problem."""
        watch = self.watch_set
        before = watch.signature()
        try:
            inputs = engine.load(self.config, self.region, adopt=False, held=True)
        except InvalidInput as exc:
            self._signature = before
            if self.git is not None:
                self._newest_valid()
            self._reject(exc.problems)
            return
        after = WatchSet(self.config, inputs.desired.settings.migrations_dir.resolve()
                         ).signature()
        pull_mode = self.git is not None or inputs.desired.settings.git is not None
        if pull_mode and ("+" in inputs.revision or inputs.revision.startswith("sha256:")):
            self._signature = after
            self._reject([Problem(str(self.config), None, None,
                                  f"not a committed state (revision {inputs.revision})",
                                  "pull mode applies only commits: commit and push the "
                                  "change, or discard the local edits")],
                         headline=f"{self.config.name} has uncommitted changes, not applied")
            return
        if watch.signature() != before:
            # changed while we read it (a save in progress): the watcher reports that
            # write too, and we read again then; until then nothing changes
            self._signature = ()
            self.log.info("desired state changed while being read; waiting for the save")
            return
        self._signature = after
        if self.problem is not None:
            self.log.info("desired state valid again", revision=inputs.revision)
        self.problem = None
        if self.inputs is None or self.inputs.revision != inputs.revision:
            self.log.info("desired state loaded", revision=inputs.revision,
                          tenants=len(inputs.desired.tenants),
                          latest_migration=inputs.catalog.latest)
        self.inputs = inputs

    def _newest_valid(self) -> None:
        """Pull mode, invalid head: apply the newest valid commit between the applied
        revision and the head instead (``lastvalid``), so every host converges on the
        same commit whenever it pulled. The head is still reported (``_reject``)."""
        applied = self.inputs.revision if self.inputs is not None else None
        found = lastvalid.newest_valid(self.config, self.region, applied, self.log)
        if found is not None:
            self.log.info("applying the newest valid commit before the invalid head",
                          revision=found.revision, before=applied,
                          tenants=len(found.desired.tenants))
            self.inputs = found
            # what is watched follows that commit's settings: the resync's look for
            # missed changes must not see one at every tick (and walk again)
            self._signature = self.watch_set.signature()

    def _reject(self, problems: tuple[Problem, ...] | list[Problem],
                headline: str | None = None) -> None:
        first = str(problems[0]) if problems else "unknown problem"
        kept = (f"still applying rev {short(self.inputs.revision)}" if self.inputs is not None
                else "nothing applied yet")
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        if headline is None:
            self.problem = f"{self.config.name} invalid ({count}; {first}) — {kept}"
        else:
            self.problem = f"{headline} — {kept}"
        self.log.error(headline or "invalid desired state: nothing applied from it",
                       count=len(problems), problems=[str(p) for p in problems], kept=kept)
        self._record("load", "failed" if headline is None else "refused",
                     revision_of(self.config), problems=[str(p) for p in problems])

    # ------------------------------------------------------------------ git pull
    def _pull(self) -> bool:
        """Fetch and fast-forward. True when HEAD moved (a reload is due)."""
        git = self.git
        assert git is not None
        watch = self.watch_set
        watched = [self.config.name]
        with contextlib.suppress(ValueError):
            watched.append(str(watch.migrations.relative_to(self.config.parent)))
        result = gitpull.pull(self.config.parent, git.remote, git.branch, watched)
        if result.ok:
            self.pull_problem = None
            self._recorded_pull = None
            if result.changed:
                self.log.info("pulled", remote=git.remote, branch=git.branch,
                              before=result.before, after=result.after)
                self._record("pull", "ok", result.after or "", before=result.before,
                             after=result.after, remote=f"{git.remote}/{git.branch}")
            return result.changed
        verb = "refused" if result.outcome == gitpull.REFUSED else "failed"
        self.pull_problem = f"pull {verb}: {result.message}"
        self.log.error(f"git pull {verb}", remote=git.remote, branch=git.branch,
                       head=result.before, fetched=result.remote, reason=result.message)
        if result.message != self._recorded_pull:  # once per distinct problem, not per tick
            self._recorded_pull = result.message
            self._record("pull", verb, result.before or "", reason=result.message,
                         fetched=result.remote, remote=f"{git.remote}/{git.branch}")
        return False

    # ------------------------------------------------------------------ passes
    def _note(self) -> str:
        return "; ".join(p for p in (self.problem, self.pull_problem) if p)

    def _pass(self, reason: str) -> None:
        inputs = self.inputs
        assert inputs is not None
        note = self._note()
        self.notifier.status(f"reconciling rev {short(inputs.revision)} ({reason})"
                             + (f"; {note}" if note else ""))
        self.log.info("pass starting", reason=reason, revision=inputs.revision)
        started = time.monotonic()
        self.in_pass = True
        if self.telemetry is not None:
            self.telemetry.pass_starting()
        check_wal = (len(inputs.desired.tenants) <= WAL_CHECK_ALWAYS
                     or started - self._wal_checked >= WAL_CHECK_EVERY)
        if check_wal:
            self._wal_checked = started
        try:
            result = engine.run_pass(inputs, self.log, wait=False, stop=self._stopping,
                                     stop_now=self._stopping_now, progress=self._progress,
                                     note=note, check_wal=check_wal)
        except LockHeld as exc:
            self._could_not_run("another reconciler holds the lock", holder=exc.holder)
            return
        except InvalidInput as exc:  # e.g. an applied migration was edited since
            self.in_pass = False
            self._reject(exc.problems)
            self._notify_status()
            self._observed(None)
            return
        except (ReconcileError, OSError, sqlite3.Error) as exc:
            self._could_not_run(f"pass failed: {type(exc).__name__}: {exc}")
            return
        finally:
            self.in_pass = False
        self._failures = 0
        self._after_pass(inputs)
        self.summary = engine.summary(result) + (f"; {note}" if note else "")
        self.log.info("pass finished", summary=self.summary,
                      duration_ms=int((time.monotonic() - started) * 1000),
                      stopped=result.stopped)
        self.next_retry = self._next_backoff(inputs)
        self._notify_status()
        self._observed(result)

    def _create_registry(self, central: Path) -> None:
        """Create (and upgrade) the registry before the first pass, under the fleet lock
        (skipped if another reconciler holds it: that one creates it)."""
        self._with_registry(central, lambda _reg: None,
                            "registry not created before the first pass")

    def _after_pass(self, inputs: engine.Inputs) -> None:
        """Issue 15: a region agent's registry is replicated once it exists (its
        heartbeat thread keeps the agent row and regions current)."""
        if self.region is not None and self._replication is not None:
            follow.ensure_registry_replicated(inputs.desired.settings, self.region, self.log)

    def _observed(self, result: Result | None) -> None:
        """Metrics and webhooks learn how the pass went (issue 16; see ``telemetry``)."""
        if self.telemetry is not None:
            self.telemetry.pass_finished(self.inputs, result, interval=self.interval,
                                         problem=self.problem, pull_problem=self.pull_problem)

    def _could_not_run(self, why: str, **fields: Any) -> None:
        self._failures += 1
        delay = min(RETRY_MAX, self.interval, RETRY_MIN * 2 ** (self._failures - 1))
        self.next_retry = time.monotonic() + delay
        self.summary = f"{why}; retrying in {delay:.0f}s"
        self.log.warning("pass did not run", reason=why, retry_in_s=delay, **fields)
        self._notify_status()
        self._observed(None)

    def _next_backoff(self, inputs: engine.Inputs) -> float | None:
        """When the earliest failed tenant's backoff expires (monotonic clock)."""
        try:
            # ``reading``, not ``read``: a region agent's heartbeat holds the registry open
            # in this process, and closing ``read``'s raw descriptor would drop its locks
            with Registry.reading(inputs.desired.settings.central) as reg:
                at = reg.next_retry_at(time.time()) if reg is not None else None
        except (ReconcileError, sqlite3.Error):  # opening (next_retry_at raises none)
            return None
        if at is None:
            return None
        return time.monotonic() + max(1.0, at - time.time())

    def _stopping(self) -> bool:
        if self.stop_signal is None:
            return False
        if not self._stop_logged:
            self._stop_logged = True
            self.log.info("stopping after the action in flight (signal again to stop "
                          "after the transaction in flight)",
                          signal=signal.Signals(self.stop_signal).name)
        return True

    def _stopping_now(self) -> bool:
        """The stop-now flag (read by worker threads too: a plain attribute read, no
        lock, so the signal handler that sets it can never deadlock with a reader)."""
        signum = self.stop_now_signal
        if signum is None:
            return False
        if not self._stop_now_logged and threading.current_thread() is threading.main_thread():
            # logged from the main thread only: rollout workers never log
            self._stop_now_logged = True
            self.log.warning("second signal: stopping right after the transaction in flight "
                             "(signal a third time to roll it back and stop at once)",
                             signal=signal.Signals(signum).name)
        return True

    def _progress(self, phase: str, done: int, total: int, failed: int) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY or done == total:
            self._last_progress = now
            self.notifier.status(f"{phase}: {done}/{total} done, {failed} failed")

    def _notify_status(self) -> None:
        if self.inputs is None:
            self.notifier.status(self.problem or self.pull_problem or "no valid desired state")
        else:
            self.notifier.status(self.summary)

    def _record(self, action: str, outcome: str, revision: str, **detail: Any) -> None:
        """An event outside a pass (load, pull), if the registry is known and free."""
        if self.inputs is None:
            return

        def write(reg: Registry) -> None:
            with reg.transaction():
                reg.event(revision=revision, tenant=None, action=action, outcome=outcome,
                          detail={k: v for k, v in detail.items() if v is not None})
        if not self._with_registry(self.inputs.desired.settings.central, write,
                                   "event not recorded", action=action):
            self.log.warning("event not recorded: another reconciler holds the lock",
                             action=action, outcome=outcome)

    def _with_registry(self, central: Path, work: Callable[[Registry], object],
                       failed: str, **fields: Any) -> bool:
        """``work`` on the registry (opened, created if need be) under the fleet lock;
        False, doing nothing, when another reconciler holds the lock. A failure is
        logged as ``failed``."""
        return lock.if_free(central, work, self.log, failed, create=True, **fields)

    # ------------------------------------------------------------------ waiting
    def _timeout(self) -> float:
        deadlines = [self.next_resync]
        if self.next_retry is not None:
            deadlines.append(self.next_retry)
        return max(0.0, min(deadlines) - time.monotonic())

    def _wait(self, timeout: float) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._rfd, selectors.EVENT_READ)
            sel.select(timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._rfd, 512):
                pass

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wfd, b"w")

    def _drain_watcher(self) -> list[str]:
        if self._watcher is None:
            return []
        paths, error = self._watcher.drain()
        if error is not None or not self._watcher.alive:
            self.log.error("file watcher stopped; restarting it (periodic resync continues)",
                           error=str(error))
            self._watcher.stop()
            self._watcher = None
            return ["<watcher restarted>"]
        if paths:
            self.log.info("files changed", paths=paths)
        return paths

    def _ensure_watcher(self) -> None:
        """(Re)start the watcher when its directories changed (one appeared or went)."""
        if self.git is not None:  # pull mode: the work tree changes only when we pull
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher = None
            return
        watch = self.watch_set
        if self._watcher is not None and self._watcher.watch == watch \
                and self._watcher.directories == watch.directories():
            return
        if self._watcher is not None:
            self._watcher.stop()
        self._watcher = Watcher(watch, self._poke).start()

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.hup = True
            return
        # no logging here: the handler may interrupt a log write holding its lock
        if self.stop_signal is None:
            self.stop_signal = signum
        elif self.stop_now_signal is None:
            self.stop_now_signal = signum
        elif self.in_pass:
            raise ForcedStop(signum)

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {s: signal.signal(s, self._on_signal)
                                    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        previous[-1] = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(config: Path, log: Logger, *, git_pull: bool = False,
        metrics_addr: str | None = None, region: str | None = None) -> int:
    return Daemon(config, log, git_pull=git_pull, metrics_addr=metrics_addr,
                  region=region).run()

