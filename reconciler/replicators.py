"""The daemon's Litestream processes: started, supervised, restarted, stopped
(issue 14, DESIGN §9; what they replicate is ``replication``'s business).

Why a module of its own: running processes (configs, descriptor limits, backoff,
signals) is a different concern from deciding which files are replicated where.

Why several processes: one ``litestream replicate`` holds 5-6 file descriptors per
database (measured on 0.5.17) and, at its limit, fails every open with EMFILE: with
the 20,000-descriptor limit of the test machine one process stalled at ~4,000 of a
10k fleet (its log: ``too many open files``, 255k lines in 45 s). The fleet is split
across ``backup.process_count`` processes (stable shard per tenant name), each child
gets its descriptor limit raised (``_raise_nofile``), and each is supervised alone.

Invariants:
* each process has its own config (``.litestream.yml``, ``.litestream-N.yml``) and
  control socket (``litestream.socket_path(central, N)``), listing only the files of
  its shard; the count is recorded in ``.litestream-processes`` before any starts;
* a process that exits is restarted with backoff, alone; the others keep replicating;
* every child dies with the daemon (``PR_SET_PDEATHSIG``), so a restarted daemon
  never finds a second Litestream replicating the same files.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from reconciler import backup as backup_rules
from reconciler import litestream, lock, tenantdb
from reconciler.backup import BackupSettings
from reconciler.context import Logger
from reconciler.desired import Settings
from reconciler.errors import ReconcileError
from reconciler.registry import Registry
from reconciler.replication import (
    PROCESSES_FILE,
    die_with_parent,
    has_lineages,
    in_service,
    inode_of,
    lineage_for,
    lineages,
    same_file,
    sync_registrations,
)
from reconciler.respawn import Backoff, Exit, Respawned, Respawner, Words

#: 1 s doubling to 60 s, back to 1 s after a minute up
RESTARTS = Backoff(first=1.0, most=60.0, stable_after=60.0)
WORDS = Words(started="backups: litestream started",
              exited="backups: litestream exited; restarting",
              cannot_start="backups: cannot start litestream")


class Supervisor:
    """The daemon's Litestream: ``n`` processes (``backup.process_count`` of the
    fleet's size and the descriptor limit, or ``settings.backup.processes``), each
    supervised on its own (``_Process``): one that exits is restarted alone, the others
    keep replicating. ``n`` is fixed for the Supervisor's life; ``fits`` tells the
    daemon when the fleet outgrew it (then it starts a new Supervisor)."""

    def __init__(self, settings: Settings, log: Logger,
                 on_event: Callable[[str, dict[str, object]], None] | None = None,
                 tenants: int = 0, registry: str | None = None) -> None:
        self._settings = settings
        self.count = self.wanted(settings, tenants)
        # issue 15: a region agent's own central.db replicates to ``registry``, in
        # process 0 (the one ``replication.control(settings)`` addresses)
        self.processes = [_Process(settings, log, on_event, k, self.count,
                                   registry if k == 0 else None)
                          for k in range(self.count)]

    @staticmethod
    def wanted(settings: Settings, tenants: int) -> int:
        """Processes for ``tenants`` declared tenants (or the files the registry has in
        service, if more)."""
        assert settings.backup is not None
        served = 0
        with contextlib.suppress(ReconcileError, OSError, sqlite3.Error), \
                Registry.reading(settings.central) as reg:
            if reg is not None:
                served = len(in_service(reg.snapshot()))
        return backup_rules.process_count(settings.backup.processes, max(tenants, served),
                                          nofile_limit())

    def fits(self, settings: Settings, tenants: int) -> bool:
        """Whether this Supervisor's process count is still the one ``tenants`` need
        (only ever more: a shrinking fleet keeps its processes until a restart)."""
        assert settings.backup is not None
        if settings.backup.processes is not None:
            return settings.backup.processes == self.count
        return backup_rules.process_count(None, tenants, nofile_limit()) <= self.count

    @property
    def settings(self) -> Settings:
        return self._settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self._settings = value
        for p in self.processes:
            p.settings = value

    @property
    def restarts(self) -> int:
        return sum(p.restarts for p in self.processes)

    def start(self) -> Supervisor:
        where = self.settings.central.parent
        tenantdb.ensure_dir(where)
        temp = where / f"{PROCESSES_FILE}.tmp"
        temp.write_text(f"{self.count}\n")
        os.chmod(temp, 0o600)  # private like every file here
        os.replace(temp, where / PROCESSES_FILE)
        # lineages recorded once, before any process builds its config: processes that
        # raced for the lock would start with partial configs and then register the
        # rest one request per file
        self.processes[0].prepare()
        for p in self.processes:
            p.prepared = True
            p.start()
        return self

    def wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        return all(p.wait_ready(max(0.1, deadline - time.monotonic()))
                   for p in self.processes)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every process at once (each syncs what it captured), then wait."""
        for p in self.processes:
            p.signal_stop()
        for p in self.processes:
            p.stop(timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.settings.central.parent / PROCESSES_FILE)


def nofile_limit() -> int:
    """The descriptor limit a Litestream child gets (``_raise_nofile``): the hard
    limit, raised to what ``PER_PROCESS_MAX`` databases need when we may (root)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return NOFILE_WANT
    return max(hard, NOFILE_WANT) if os.geteuid() == 0 else hard


NOFILE_WANT = backup_rules.PER_PROCESS_MAX * backup_rules.FDS_PER_DB + backup_rules.FD_RESERVE


class _Process(Respawned):
    """Runs one ``litestream replicate`` (shard ``shard`` of ``count``) for the daemon:
    generated config, restarted with exponential backoff (1 s doubling to 60 s, reset
    after a minute up: ``RESTARTS``, run by a ``respawn.Respawner``) whenever it exits,
    each exit logged as an error and reported through ``on_event``."""

    def __init__(self, settings: Settings, log: Logger,
                 on_event: Callable[[str, dict[str, object]], None] | None = None,
                 shard: int = 0, count: int = 1, registry: str | None = None) -> None:
        self.settings = settings
        self.registry = registry  # where central.db replicates (None: not at all)
        self.shard, self.count = shard, count
        self.log = log.bind(process=shard) if count > 1 else log
        self.on_event = on_event or (lambda _what, _detail: None)
        self.prepared = False  # lineages just recorded: the next spawn skips it
        self._respawn = Respawner(f"litestream-{shard}", self._spawn, self.log, RESTARTS,
                                  WORDS, on_start=self._started, on_exit=self._exited)

    @property
    def backup(self) -> BackupSettings:
        assert self.settings.backup is not None
        return self.settings.backup

    def config(self) -> str:
        sock = litestream.socket_path(self.settings.central, self.shard)
        dbs: list[tuple[Path, str]] = []
        with Registry.reading(self.settings.central) as reg:
            if reg is not None and reg.version >= 1 and has_lineages(reg):
                served = in_service(reg.snapshot())
                for lin in lineages(reg):
                    if backup_rules.shard_of(lin.tenant, self.count) != self.shard:
                        continue
                    p = served.get(lin.tenant)
                    if p is not None and str(p) == lin.path and inode_of(p) == lin.inode:
                        dbs.append((p, lin.url))
        if self.registry is not None and self.settings.central.exists():
            dbs.append((self.settings.central, self.registry))
        return litestream.config_text(self.backup, sock, dbs)

    def prepare(self) -> None:
        """Before Litestream starts: record a lineage for every file in service that has
        none, so the generated config lists the whole fleet and Litestream opens it at
        start-up, rather than one ``register`` request per file afterwards (measured
        ~5 files/s at several thousand on this machine). Skipped when a pass holds the
        lock; that pass registers what is new when it ends."""
        backup = self.backup

        def record(registry: Registry) -> None:
            snapshot = registry.snapshot()
            current = {lin.tenant: lin for lin in lineages(registry)}
            with registry.transaction():
                for tenant, path in sorted(in_service(snapshot).items()):
                    old = current.get(tenant)
                    if old is None or not same_file(old, path, inode_of(path), backup):
                        lineage_for(registry, self.settings, backup, tenant, path, current)
            if self.registry is not None and not registry.truncate_wal():
                self.log.warning("backups: the registry's -wal was not emptied before "
                                 "Litestream started (a reader held it)")
        self._with_registry(record, "recording lineages before start")

    def _with_registry(self, work: Callable[[Registry], object], what: str) -> None:
        """``work`` on the registry under the fleet lock; skipped when a pass holds the
        lock (the pass does the same at its end) or there is no registry yet."""
        lock.if_free(self.settings.central, work, self.log, f"backups: {what} failed",
                     create=False)

    def _spawn(self) -> subprocess.Popen[bytes]:
        if not self.prepared:
            self.prepare()
        self.prepared = False
        name = f".litestream-{self.shard}.yml" if self.shard else ".litestream.yml"
        where = self.settings.central.parent / name
        tenantdb.ensure_dir(where.parent)
        text = self.config()
        with litestream.config_file(text, where):
            pass
        for url in {u for u in _urls(text)}:
            with contextlib.suppress(ReconcileError):
                litestream.ensure_bucket(url)
        return subprocess.Popen([litestream.binary(), "replicate", "-no-expand-env",
                                 "-config", str(where)], stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_child_setup)

    def _started(self, _proc: subprocess.Popen[bytes]) -> None:
        if self.wait_ready(10.0):
            self._register()

    def _exited(self, ended: Exit) -> bool:
        self.on_event("litestream-exit", {"exit_code": ended.code, "process": self.shard,
                                          "restarts": self.restarts})
        return False  # restarted after the backoff, the exit logged

    def _register(self) -> None:
        """Bring a fresh Litestream up to date with the registry (files created while it
        was down)."""
        self._with_registry(lambda reg: sync_registrations(self.settings, reg, self.log),
                            "registering after start")

    def wait_ready(self, timeout: float = 30.0) -> bool:
        ctl = litestream.Control(litestream.socket_path(self.settings.central, self.shard))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ctl.alive():
                return True
            time.sleep(0.1)
        return False

    def signal_stop(self) -> None:
        """SIGTERM (Litestream syncs what it captured); no restart after it."""
        self._respawn.signal_stop()

    def stop(self, timeout: float = 15.0) -> None:
        """``signal_stop``, then wait; SIGKILL after ``timeout``."""
        self.signal_stop()
        self._respawn.stop(timeout, timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(litestream.socket_path(self.settings.central, self.shard))


def _child_setup() -> None:
    """In the child, before exec: dies with the daemon, and may open enough files."""
    die_with_parent()
    _raise_nofile()


def _raise_nofile() -> None:
    """Raise the child's RLIMIT_NOFILE to ``NOFILE_WANT`` when allowed (root), else its
    soft limit to the hard one (Go does that too; explicit here). Litestream holds 5-6
    descriptors per database and fails every open with EMFILE past its limit."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = NOFILE_WANT if hard != resource.RLIM_INFINITY else hard
    try:
        if hard != resource.RLIM_INFINITY and hard < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _urls(config: str) -> Iterator[str]:
    for db in json.loads(config).get("dbs", []):
        yield str(db["replica"]["url"])
