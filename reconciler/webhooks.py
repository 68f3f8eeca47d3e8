"""Webhook notifications (``settings.notify``): a halted rollout at 3 a.m. pages someone.

Why: the journal and ``reconcile status`` tell only those who look. Each target of
``settings.notify`` gets a JSON message with a human sentence naming the root cause,
for Slack-style incoming webhooks (``text``) or Alertmanager (its ``/api/v2/alerts``
list). (``notify.py`` is systemd's sd_notify; this is the other kind.)

Model: a *condition* is something true of the fleet now — a halted rollout, a failed or
missing tenant, an invalid desired state, a refused pull, drift (through the HOOK
below) — identified by a key that stays the same while it lasts; a finished rollout is
a condition that never clears. After each pass the daemon hands the current
conditions to ``Webhooks.update``; a key not notified before is sent once, a key that
is gone is forgotten (so a later recurrence is sent again).

Invariants:
* one message per condition, not one per pass: the notified keys are kept in the
  registry (table ``notified``), so a restarted daemon does not repeat them;
* nothing here blocks or fails a pass: messages go through a bounded queue to a
  sender thread (a full queue drops the message and says so in the log); sends are
  retried with exponential backoff (``BACKOFF`` × 2ⁿ, ``ATTEMPTS`` tries; a 4xx other
  than 408/429 is not retried);
* secrets never come from tenants.yaml: a target names an environment variable
  (``url_env``) or a file (``url_file``, e.g. under systemd's
  ``${CREDENTIALS_DIRECTORY}``), read when sending; URLs are never logged;
* one message per event per update: ten tenants failing in a pass make one message
  listing them (at most ``MAX_LISTED`` named);
* in the Alertmanager format one alert per event kind (its labels carry no tenant),
  firing with ``endsAt`` a week ahead, resolved (``endsAt`` now) once no condition
  of that kind is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.context import Logger
from reconciler.notifyconfig import NotifyTarget
from reconciler.revision import short

ATTEMPTS = 5
BACKOFF = 1.0  # seconds before the first retry; doubles after each
TIMEOUT = 10.0  # per HTTP request
QUEUE_SIZE = 200
MAX_LISTED = 10
SEVERITY = {"rollout_halted": "critical", "tenant_failed": "critical",
            "tenant_missing": "critical", "drift_found": "warning",
            "desired_state_invalid": "warning", "git_pull_refused": "warning",
            "rollout_finished": "info"}
ALERT_TTL = 7 * 86400.0  # endsAt of a firing alert (alertmanager format), seconds
LASTING = ("rollout_finished",)  # conditions that never clear (kept: last KEEP_LASTING)
KEEP_LASTING = 50


@dataclass(frozen=True)
class Notice:
    """One condition: ``key`` is stable while it lasts; ``text`` is a sentence."""

    event: str  # one of desired.NOTIFY_EVENTS
    key: str
    text: str


# ---------------------------------------------------------------------------------
# HOOK for issue 13 (drift), wired by whoever merges it: a source reads the registry
# (read-only connection) and returns ``Notice("drift_found", key, sentence)`` per
# drifted tenant, its key changing when the drift does.
ConditionSource = Callable[[sqlite3.Connection], Iterable[Notice]]
CONDITION_SOURCES: tuple[ConditionSource, ...] = ()
# ---------------------------------------------------------------------------------


def fleet_conditions(central: Path, current_rollout: Callable[[], str]) -> list[Notice]:
    """Halted rollout, failed and missing tenants, from the registry (read-only).

    ``current_rollout``: the plan's rollout key (asked only when a rollout is halted: a
    halt recorded for an older desired state no longer holds anything). Raises
    ``sqlite3.Error`` when the registry cannot be read."""
    if not central.exists():
        return []
    conn = sqlite3.connect(f"{central.as_uri()}?mode=ro", uri=True, timeout=10.0,
                           isolation_level=None)
    try:
        conn.execute("BEGIN")
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "tenants" not in tables:
            return []
        out: list[Notice] = []
        bad = conn.execute("SELECT name, status, schema_version, path, failure, failed_key, "
                           "failures FROM tenants WHERE status IN ('failed', 'missing') "
                           "ORDER BY name").fetchall()
        first_failure = next(((n, f) for n, s, _v, _p, f, _k, _c in bad if s == "failed"),
                             None)
        for name, status, version, path, failure, failed_key, _count in bad:
            if status == "failed":
                out.append(Notice("tenant_failed", f"tenant_failed:{name}:{failed_key}",
                                  f"tenant {name} failed at v{version}: "
                                  f"{failure or 'no reason recorded'}"))
            else:
                out.append(Notice("tenant_missing", f"tenant_missing:{name}:{path}",
                                  f"tenant {name} is missing: registered at v{version}, its "
                                  f"file {path} is gone; it is not recreated — restore it "
                                  f"with `reconcile restore {name} --from FILE`"))
        if "rollout" in tables:
            halted = conn.execute("SELECT key, detail FROM rollout WHERE state = 'halted'"
                                  ).fetchall()
            if halted:
                key = current_rollout()
                for rkey, detail in halted:
                    if rkey == key:
                        out.append(_halt_notice(rkey, json.loads(detail or "{}"),
                                                first_failure))
        for source in CONDITION_SOURCES:
            out.extend(source(conn))
        return out
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")
        conn.close()


def _halt_notice(key: str, d: Mapping[str, Any],
                 first: tuple[str, str | None] | None) -> Notice:
    cause = (f"; first failure: tenant {first[0]}: {first[1] or 'no reason recorded'}"
             if first is not None else "")
    rev = d.get("revision")
    return Notice("rollout_halted", f"rollout_halted:{key}",
                  f"rollout{f' of rev {short(rev)}' if rev else ''} halted after "
                  f"{d.get('failures', '?')} failed tenant(s) (max_failures "
                  f"{d.get('max_failures', '?')}); {d.get('pending', '?')} tenant(s) wait at "
                  f"their version{cause}. Fix the cause, then run `reconcile --retry-failed` "
                  "or change the migration")


def problem_notice(event: str, text: str) -> Notice:
    """A desired-state or pull problem (the daemon's own text) as a condition."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Notice(event, f"{event}:{digest}", text)


def finished_notice(revision: str, target: int, tenants: int) -> Notice:
    return Notice("rollout_finished", f"rollout_finished:{revision}:{target}",
                  f"rollout of rev {short(revision)} finished: all {tenants} declared "
                  f"tenant(s) are at their target schema (default v{target})")


# --------------------------------------------------------------------------- payloads


def message(notices: list[Notice]) -> str:
    """One sentence for notices of one event: the first ``MAX_LISTED`` in full."""
    if len(notices) == 1:
        return notices[0].text
    shown = "; ".join(n.text for n in notices[:MAX_LISTED])
    more = len(notices) - MAX_LISTED
    return (f"{len(notices)} × {notices[0].event.replace('_', ' ')}: {shown}"
            + (f"; and {more} more (see `reconcile status`)" if more > 0 else ""))


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def payload(target: NotifyTarget, event: str, notices: list[Notice], fleet: str,
            now: float, resolved: bool = False) -> bytes:
    """The JSON body for ``target`` (``slack``: ``{"text": …}`` plus fields Slack
    ignores; ``alertmanager``: the list ``POST /api/v2/alerts`` takes, with ``endsAt``
    ``ALERT_TTL`` ahead — Alertmanager resolves an alert that is not re-sent before
    it, after ``resolve_timeout`` when none is given — or now, once ``resolved``)."""
    text = message(notices) if notices else f"{event.replace('_', ' ')}: resolved"
    severity = SEVERITY.get(event, "warning")
    if target.format == "alertmanager":
        body: Any = [{
            "labels": {"alertname": "TenantReconciler" + event.title().replace("_", ""),
                       "event": event, "severity": severity, "fleet": fleet,
                       "service": "tenant-reconciler"},
            "annotations": {"summary": text.split(". ")[0][:200], "description": text},
            "endsAt": _iso(now if resolved else now + ALERT_TTL),
        }]
        if not resolved:
            body[0]["startsAt"] = _iso(now)
    else:
        body = {"text": f"[tenant-reconciler {fleet}] {text}", "event": event,
                "severity": severity, "fleet": fleet, "count": len(notices)}
    return json.dumps(body).encode()


def resolve_url(target: NotifyTarget, env: Mapping[str, str] | None = None) -> str:
    """The URL of ``target``, read now. Raises ``LookupError`` saying what is missing
    (never the URL itself)."""
    environ = os.environ if env is None else env
    if target.url_env is not None:
        url = environ.get(target.url_env, "").strip()
        if not url:
            raise LookupError(f"environment variable {target.url_env} is not set")
        return url
    assert target.url_file is not None
    path = _expand(target.url_file, environ)
    try:
        url = Path(path).read_text().strip().splitlines()[0].strip()
    except (OSError, IndexError, UnicodeDecodeError) as exc:
        raise LookupError(f"cannot read the URL from {path}: "
                          f"{getattr(exc, 'strerror', None) or 'empty file'}") from None
    return url


def _expand(text: str, env: Mapping[str, str]) -> str:
    out = text
    for name, value in env.items():
        out = out.replace("${" + name + "}", value)
    if "${" in out:
        raise LookupError(f"{text}: a variable in it is not set (under systemd, "
                          "${CREDENTIALS_DIRECTORY} is set by LoadCredential=)")
    return out


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class _Message:
    target: NotifyTarget
    event: str
    body: bytes


class Webhooks:
    """Dedup state, a bounded queue and the sender thread for one daemon."""

    def __init__(self, log: Logger, fleet: str, *, backoff: float = BACKOFF,
                 attempts: int = ATTEMPTS) -> None:
        self.log = log
        self.fleet = fleet
        self.backoff = backoff
        self.attempts = attempts
        self.targets: tuple[NotifyTarget, ...] = ()
        self.notified: dict[str, str] | None = None  # key → event; None: not loaded yet
        self.unsaved = False  # the registry does not yet hold ``notified``
        self._queue: queue.Queue[_Message | None] = queue.Queue(QUEUE_SIZE)
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ main thread
    def update(self, notices: Iterable[Notice], targets: tuple[NotifyTarget, ...],
               now: float | None = None) -> tuple[dict[str, str], set[str]]:
        """Queue a message for each condition not notified yet; returns (added, removed)
        for the registry's ``notified`` table (``self.notified`` must be loaded)."""
        assert self.notified is not None
        self.targets = targets
        current = {n.key: n for n in notices}
        new = [n for k, n in current.items() if k not in self.notified]
        removed = {k for k, e in self.notified.items() if k not in current and e not in LASTING}
        lasting = [k for k, e in self.notified.items() if e in LASTING]
        removed.update(lasting[:max(0, len(lasting) - KEEP_LASTING)])
        by_event: dict[str, list[Notice]] = {}
        for n in new:
            by_event.setdefault(n.event, []).append(n)
        when = time.time() if now is None else now
        for event, group in by_event.items():
            for target in targets:
                if event in target.events:
                    self._enqueue(_Message(target, event,
                                           payload(target, event, group, self.fleet, when)))
        added = {n.key: n.event for n in new}
        cleared = {self.notified[k] for k in removed} - {n.event for n in current.values()}
        for event in sorted(cleared - set(LASTING)):  # nothing of this kind is left
            for target in targets:
                if target.format == "alertmanager" and event in target.events:
                    self._enqueue(_Message(target, event, payload(
                        target, event, [], self.fleet, when, resolved=True)))
        for k in removed:
            self.notified.pop(k, None)
        self.notified.update(added)
        return added, removed

    def _enqueue(self, m: _Message) -> None:
        try:
            self._queue.put_nowait(m)
        except queue.Full:
            self._count(m.event, "dropped")
            self.log.error("notification dropped: the send queue is full (is the webhook "
                           "down?)", target=m.target.name, about=m.event)

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the sender (messages still queued after ``timeout`` are dropped)."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout)

    # ------------------------------------------------------------ sender thread
    def _count(self, event: str, outcome: str) -> None:
        with self._lock:
            self._counts[(event, outcome)] += 1

    def _run(self) -> None:
        while True:
            m = self._queue.get()
            if m is None:
                return
            try:
                outcome = self._deliver(m)
            except Exception as exc:  # the thread must outlive any one message
                outcome = "failed"
                self.log.error("notification failed", target=m.target.name, about=m.event,
                               error=f"{type(exc).__name__}: {exc}")
            self._count(m.event, outcome)

    def _deliver(self, m: _Message) -> str:
        delay = self.backoff
        why = ""
        for attempt in range(1, self.attempts + 1):
            try:
                url = resolve_url(m.target)
            except LookupError as exc:
                self.log.error("notification not sent: no URL for the target",
                               target=m.target.name, about=m.event, reason=str(exc))
                return "no_url"
            try:
                request = urllib.request.Request(
                    url, data=m.body, method="POST",
                    headers={"Content-Type": "application/json",
                             "User-Agent": "tenant-reconciler"})
                with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                    response.read()
                self.log.info("notification sent", target=m.target.name, about=m.event,
                              attempt=attempt)
                return "sent"
            except urllib.error.HTTPError as exc:
                why = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    self.log.error("notification refused by the webhook", target=m.target.name,
                                   about=m.event, status=exc.code)
                    return "refused"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                why = str(getattr(exc, "reason", None) or exc)
            if attempt < self.attempts:
                self.log.warning("notification failed; retrying", target=m.target.name,
                                 about=m.event, attempt=attempt, reason=why,
                                 retry_in_s=delay)
                if self._stop.wait(delay):
                    return "failed"
                delay *= 2
        self.log.error("notification failed; giving up", target=m.target.name, about=m.event,
                       attempts=self.attempts, reason=why)
        return "failed"
