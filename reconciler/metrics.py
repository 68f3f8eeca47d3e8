"""Prometheus metrics of a fleet: an immutable snapshot, and the collector that serves it.

Why: operators put daemons on dashboards and get paged from alert rules (issue 16); the
one-line systemd status says nothing to Prometheus. The official ``prometheus_client``
writes the exposition format — nothing here formats text by hand.

How: after each pass the daemon (or ``reconcile metrics`` once) calls ``gather``, which
reads the registry with a few aggregate queries and returns a ``FleetMetrics`` value;
``families`` turns it (plus the daemon's own facts) into metric families once, and the
``Collector`` hands those same prebuilt families to every scrape. So a scrape never
touches the database, never takes a lock a pass needs, and costs the same at 10 or
100k tenants (the series count is bounded; see bench/scrape.py).

Invariants:
* one prefix (``tenant_reconciler_``), base units (seconds, bytes), ``_total`` on
  counters — the Prometheus naming conventions
  (https://prometheus.io/docs/practices/naming/);
* labels are bounded: region, status, schema version, action kind, outcome, event —
  never a tenant name (thousands of tenants would be thousands of series; per-tenant
  detail stays in ``status --json`` and ``history``);
* counters come from the registry (``events`` for actions, ``runs`` for the pass
  histogram), read incrementally past the last row seen, so they survive a restart
  of the daemon and ``reconcile metrics --textfile`` prints the same numbers as the
  daemon's ``/metrics``;
* every value here is immutable once built; ``Board`` swaps one reference, which a
  scrape reads without a lock.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector as _CollectorBase

from reconciler import plan as plan_mod
from reconciler import readonly
from reconciler.desired import Desired
from reconciler.errors import PermanentError
from reconciler.migrations import Catalog
from reconciler.revision import short

PREFIX = "tenant_reconciler"
# pass durations span a no-op pass (tens of ms) to a large rollout (an hour)
PASS_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                   120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class Histogram:
    """Observations in ``PASS_BUCKETS`` (per bucket, not cumulative; the last is +Inf)."""

    counts: tuple[int, ...] = (0,) * (len(PASS_BUCKETS) + 1)
    total: float = 0.0  # sum of observations, seconds

    def add(self, values: Iterable[float]) -> Histogram:
        counts = list(self.counts)
        total = self.total
        for v in values:
            total += v
            counts[next((i for i, b in enumerate(PASS_BUCKETS) if v <= b),
                        len(PASS_BUCKETS))] += 1
        return Histogram(tuple(counts), total)

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*PASS_BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


@dataclass(frozen=True)
class Signal:
    """One extra gauge sample contributed through the HOOK below (drift, backups)."""

    name: str  # without the prefix, e.g. "backup_lag_seconds"
    help: str
    value: float
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


# ---------------------------------------------------------------------------------
# HOOK for issues 13 (drift) and 14 (backups), wired by whoever merges them: each
# source reads its own registry tables (the connection is read-only) and returns
# ``Signal`` samples, e.g. ``drift_tenants{kind}`` or ``backup_lag_seconds`` (the name
# deploy/monitoring's BackupLagging alert expects). No source is wired today: the
# families simply do not appear, and the alert stays inactive.
SignalSource = Callable[[sqlite3.Connection], Iterable[Signal]]
SIGNAL_SOURCES: tuple[SignalSource, ...] = ()
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetMetrics:
    """What the registry said after a pass, aggregated (no tenant names)."""

    gathered_at: float  # epoch seconds
    tenants: Mapping[tuple[str, str, int], int]  # (region, status, schema version) → count
    actions: Mapping[tuple[str, str], int]  # (action, outcome) → events recorded
    last_event_id: int
    passes: Histogram  # durations of recorded passes
    last_run_id: int
    last_pass_end: float | None  # epoch seconds of the last recorded pass
    declared: int  # tenants in tenants.yaml
    at_target: int  # of those, active at their target schema version
    target: int  # the fleet's default target schema version
    halted: bool  # the current rollout is halted
    revision: str
    registry_bytes: int  # central.db plus its -wal
    signals: tuple[Signal, ...] = ()

    @staticmethod
    def empty(revision: str = "") -> FleetMetrics:
        e: Mapping[tuple[str, str], int] = MappingProxyType({})
        return FleetMetrics(0.0, MappingProxyType({}), e, 0, Histogram(), 0, None, 0, 0, 0,
                            False, revision, 0)


@dataclass(frozen=True)
class DaemonFacts:
    """What only a running daemon knows (absent from ``reconcile metrics``)."""

    interval: float  # settings.interval, seconds
    desired_valid: bool  # the files on disk are valid (else the last valid state applies)
    pull_ok: bool  # the last git pull worked (True when not in pull mode)
    last_attempt_end: float | None  # a pass ended or could not run (epoch seconds)
    last_attempt_ok: bool
    passes: Mapping[str, int]  # "completed" | "not_run" → count since start
    pass_started: float | None  # epoch seconds, while a pass runs
    notifications: Mapping[tuple[str, str], int]  # (event, outcome) → count since start


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _registry_bytes(central: Path) -> int:
    total = 0
    for p in (central, central.with_name(central.name + "-wal")):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


@contextlib.contextmanager
def _read_only(central: Path) -> Iterator[sqlite3.Connection | None]:
    if not central.exists():
        yield None
        return
    conn = sqlite3.connect(f"{central.as_uri()}?mode=ro", uri=True, timeout=10.0,
                           isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


@dataclass(frozen=True)
class Targets:
    """Declared tenants by target version, built once per desired state (the daemon
    keeps it), so a pass's snapshot counts tenants at target with set operations in C."""

    default: int  # the fleet's target (settings.schema, or the newest migration)
    following: frozenset[str]  # declared tenants at the default target
    pinned: Mapping[str, int]  # declared tenants with a schema of their own

    @staticmethod
    def of(desired: Desired, latest: int) -> Targets:
        default = latest if desired.settings.schema is None else desired.settings.schema
        pinned = {n: s.schema for n, s in desired.tenants.items()
                  if s.schema is not None and s.schema != default}
        return Targets(default, frozenset(desired.tenants.keys() - pinned.keys()),
                       MappingProxyType(pinned))


def _at_target(conn: sqlite3.Connection, targets: Targets) -> int:
    names = [r[0] for r in conn.execute("SELECT name FROM tenants WHERE status = 'active' "
                                        "AND schema_version = ?", (targets.default,))]
    count = len(targets.following.intersection(names))
    if targets.pinned:
        count += sum(1 for name, version in conn.execute(
            "SELECT name, schema_version FROM tenants WHERE status = 'active'")
            if targets.pinned.get(name, -1) == version)
    return count


def gather(desired: Desired, catalog: Catalog, revision: str,
           previous: FleetMetrics | None = None,
           halted_key: Callable[[], str] | None = None,
           targets: Targets | None = None, untouched: bool = False) -> FleetMetrics:
    """Read the registry of ``desired`` (read-only) into a ``FleetMetrics``.

    ``previous``: the last value, so counters continue from it (only newer ``events``
    and ``runs`` rows are read). ``halted_key``: computes the current rollout key
    (``plan.rollout_key``; the daemon caches it per desired state) — asked only when
    some rollout is halted. ``targets``: ``Targets.of(desired, catalog.latest)``, if
    the caller keeps one. Raises ``sqlite3.Error`` when the registry cannot be read."""
    central = desired.settings.central
    goal = targets if targets is not None else Targets.of(desired, catalog.latest)
    target = goal.default
    base = previous if previous is not None else FleetMetrics.empty(revision)
    if not central.exists():
        return replace(FleetMetrics.empty(revision), gathered_at=time.time(),
                       declared=len(desired.tenants), target=target)

    def read(conn: sqlite3.Connection) -> tuple[Any, ...]:
        base_ = base
        conn.execute("BEGIN")  # one consistent read
        try:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if previous is not None and _replaced(conn, tables, previous):
                base_ = FleetMetrics.empty(revision)  # a registry put back from a copy
            tenants: dict[tuple[str, str, int], int] = {}
            at_target = 0
            if "tenants" in tables:
                for region, status, version, n in conn.execute(
                        "SELECT region, status, schema_version, COUNT(*) FROM tenants "
                        "GROUP BY 1, 2, 3"):
                    tenants[(region, status, int(version))] = int(n)
                at_target = _at_target(conn, goal)
            actions = dict(base_.actions)
            last_event = base_.last_event_id
            if "events" in tables:
                for action, outcome, n, top in conn.execute(
                        "SELECT action, outcome, COUNT(*), MAX(id) FROM events WHERE id > ? "
                        "GROUP BY 1, 2", (base_.last_event_id,)):
                    actions[(action, outcome)] = actions.get((action, outcome), 0) + int(n)
                    last_event = max(last_event, int(top))
            passes, last_run, last_end = base_.passes, base_.last_run_id, base_.last_pass_end
            halted_rows: set[str] = set()
            if "runs" in tables:
                durations: list[float] = []
                for run_id, started, finished in conn.execute(
                        "SELECT id, started_at, finished_at FROM runs WHERE id > ? "
                        "ORDER BY id", (base_.last_run_id,)):
                    start, end = _epoch(started), _epoch(finished)
                    last_run = int(run_id)
                    if start is not None and end is not None:
                        durations.append(max(0.0, end - start))
                        last_end = end
                passes = passes.add(durations)
                halted_rows = {r[0] for r in conn.execute(
                    "SELECT key FROM rollout WHERE state = 'halted'")}
            signals = tuple(s for source in SIGNAL_SOURCES for s in source(conn))
        finally:
            conn.execute("COMMIT")
        return (base_, tenants, at_target, actions, last_event, passes, last_run, last_end,
                halted_rows, signals)

    if untouched:  # a command: no -wal/-shm created, no byte changed (``readonly``)
        found = readonly.read(central, read)
    else:  # the daemon, which may hold the registry open: SQLite's own connection
        with _read_only(central) as conn:
            assert conn is not None
            found = read(conn)
    (base, tenants, at_target, actions, last_event, passes, last_run, last_end, halted_rows,
     signals) = found
    halted = bool(halted_rows) and (halted_key or (lambda: rollout_key(desired, catalog)))() \
        in halted_rows
    return FleetMetrics(
        gathered_at=time.time(), tenants=MappingProxyType(tenants),
        actions=MappingProxyType(actions), last_event_id=last_event, passes=passes,
        last_run_id=last_run, last_pass_end=last_end, declared=len(desired.tenants),
        at_target=at_target, target=target, halted=halted, revision=revision,
        registry_bytes=_registry_bytes(central), signals=signals)


def _replaced(conn: sqlite3.Connection, tables: set[str], previous: FleetMetrics) -> bool:
    """Whether the registry has fewer events or runs than already counted (restored
    from a backup, or another file): then every counter is read again from scratch."""
    for table, seen in (("events", previous.last_event_id), ("runs", previous.last_run_id)):
        if table in tables and seen:
            top = conn.execute(f"SELECT MAX(id) FROM {table}").fetchone()[0]
            if top is None or top < seen:
                return True
    return False


def rollout_key(desired: Desired, catalog: Catalog) -> str:
    """The planner's key of the current rollout (see ``plan.rollout_key``)."""
    return plan_mod.rollout_key(desired, catalog)


def build_info() -> dict[str, str]:
    try:
        version = metadata.version("tenant-reconciler")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"version": version, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version}


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def families(fleet: FleetMetrics | None, daemon: DaemonFacts | None,
             build: Mapping[str, str]) -> tuple[Metric, ...]:
    """The metric families for one snapshot, built once (every scrape reuses them)."""
    out: list[Metric] = []
    info = InfoMetricFamily(_name("build"), "Version of tenant-reconciler and its runtime.",
                            value=dict(build))
    out.append(info)
    if fleet is not None:
        out.extend(_fleet_families(fleet))
    if daemon is not None:
        out.extend(_daemon_families(daemon))
    return tuple(out)


def _fleet_families(f: FleetMetrics) -> Iterator[Metric]:
    g = GaugeMetricFamily(_name("tenants"), "Registered tenants by region, status and "
                          "schema version.", labels=["region", "status", "schema_version"])
    for (region, status, version), n in sorted(f.tenants.items()):
        g.add_metric([region, status, str(version)], n)
    yield g
    c = CounterMetricFamily(_name("actions"), "Actions recorded in the events table, by "
                            "kind and outcome.", labels=["action", "outcome"])
    for (action, outcome), n in sorted(f.actions.items()):
        c.add_metric([action, outcome], n)
    yield c
    h = HistogramMetricFamily(_name("pass_duration_seconds"),
                              "Duration of reconciliation passes that ran to completion.")
    h.add_metric([], f.passes.cumulative(), f.passes.total)
    yield h
    if f.last_pass_end is not None:
        yield GaugeMetricFamily(_name("last_successful_pass_timestamp_seconds"),
                                "When the last pass that ran to completion ended (Unix time).",
                                value=f.last_pass_end)
    yield GaugeMetricFamily(_name("declared_tenants"), "Tenants declared in tenants.yaml.",
                            value=f.declared)
    yield GaugeMetricFamily(_name("rollout_tenants_at_target"),
                            "Declared tenants active at their target schema version.",
                            value=f.at_target)
    yield GaugeMetricFamily(_name("rollout_progress_ratio"),
                            "Share of declared tenants at their target schema version (0-1).",
                            value=f.at_target / f.declared if f.declared else 1.0)
    yield GaugeMetricFamily(_name("rollout_target_schema_version"),
                            "The fleet's default target schema version.", value=f.target)
    yield GaugeMetricFamily(_name("rollout_halted"), "1 while the current rollout is halted.",
                            value=1.0 if f.halted else 0.0)
    yield InfoMetricFamily(_name("desired_state"), "Revision of the desired state applied.",
                           value={"revision": short(f.revision) if f.revision else ""})
    yield GaugeMetricFamily(_name("registry_size_bytes"),
                            "Size of central.db and its write-ahead log.",
                            value=f.registry_bytes)
    by_name: dict[str, GaugeMetricFamily] = {}
    for s in f.signals:
        fam = by_name.get(s.name)
        if fam is None:
            fam = by_name[s.name] = GaugeMetricFamily(_name(s.name), s.help,
                                                      labels=sorted(s.labels))
        fam.add_metric([s.labels[k] for k in sorted(s.labels)], s.value)
    yield from by_name.values()


def _daemon_families(d: DaemonFacts) -> Iterator[Metric]:
    yield GaugeMetricFamily(_name("desired_state_valid"),
                            "1 when tenants.yaml and migrations on disk are valid (else the "
                            "last valid state is applied).", value=float(d.desired_valid))
    yield GaugeMetricFamily(_name("git_pull_ok"), "1 unless the last git pull failed or was "
                            "refused.", value=float(d.pull_ok))
    yield GaugeMetricFamily(_name("interval_seconds"), "settings.interval.", value=d.interval)
    if d.last_attempt_end is not None:
        yield GaugeMetricFamily(_name("last_pass_timestamp_seconds"),
                                "When the last pass ended or could not run (Unix time).",
                                value=d.last_attempt_end)
    yield GaugeMetricFamily(_name("last_pass_success"),
                            "1 when the last pass ran to completion.",
                            value=float(d.last_attempt_ok))
    c = CounterMetricFamily(_name("passes"), "Passes since the daemon started, by result.",
                            labels=["result"])
    for result in ("completed", "not_run"):
        c.add_metric([result], d.passes.get(result, 0))
    yield c
    yield GaugeMetricFamily(_name("pass_in_progress"), "1 while a pass runs.",
                            value=float(d.pass_started is not None))
    n = CounterMetricFamily(_name("notifications"), "Webhook notifications since the daemon "
                            "started, by event and outcome.", labels=["event", "outcome"])
    for (event, outcome), count in sorted(d.notifications.items()):
        n.add_metric([event, outcome], count)
    yield n


@dataclass(frozen=True)
class Published:
    """What a scrape sees: the families and the values they were built from."""

    fleet: FleetMetrics | None
    daemon: DaemonFacts | None
    families: tuple[Metric, ...]


class Board:
    """The one mutable cell: the latest ``Published`` snapshot. ``publish`` replaces the
    reference (atomic in CPython); readers never see a half-built snapshot."""

    def __init__(self) -> None:
        self.build = build_info()
        self._current = Published(None, None, families(None, None, self.build))

    def publish(self, fleet: FleetMetrics | None, daemon: DaemonFacts | None) -> Published:
        snap = Published(fleet, daemon, families(fleet, daemon, self.build))
        self._current = snap
        return snap

    @property
    def current(self) -> Published:
        return self._current


class Collector(_CollectorBase):
    """A ``prometheus_client`` collector serving the board's latest families as they are."""

    def __init__(self, board: Board) -> None:
        self.board = board

    def collect(self) -> Iterable[Metric]:
        return self.board.current.families


def registry_for(board: Board) -> CollectorRegistry:
    """A registry holding only the fleet collector (no process metrics: the textfile and
    the endpoint stay comparable; node_exporter reports the host)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Collector(board))
    return reg


def once(desired: Desired, catalog: Catalog, revision: str) -> Board:
    """A board holding the fleet's metrics now (``reconcile metrics``). Raises
    ``PermanentError`` when the registry cannot be read."""
    try:
        fleet = gather(desired, catalog, revision, untouched=True)
    except sqlite3.Error as exc:
        raise PermanentError(f"cannot read registry {desired.settings.central}: {exc}"
                             ) from None
    board = Board()
    board.publish(fleet, None)
    return board


def text(board: Board) -> str:
    """The exposition text of the board (``prometheus_client.generate_latest``)."""
    return generate_latest(registry_for(board)).decode()


def write_textfile(path: Path, board: Board) -> None:
    """Write the board atomically for node_exporter's textfile collector
    (``write_to_textfile`` writes a temporary file beside ``path``, then renames it).
    Raises ``PermanentError`` saying why when it cannot be written."""
    try:
        write_to_textfile(os.fspath(path), registry_for(board))
    except OSError as exc:
        raise PermanentError(f"cannot write {path}: {exc.strerror or exc} (the directory "
                             "must exist and be writable)") from None
