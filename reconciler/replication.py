"""Every active tenant replicated by Litestream: which files, to where, and whether the
backups are good (issue 14, DESIGN §9).

Why: Litestream copies SQLite files continuously but knows nothing of tenants. This
module keeps its set of databases equal to the fleet's files in service, records each
file's replica location (a *lineage*, ``backup_lineages`` in ``central.db``), and turns
what Litestream reports into observed state.

How Litestream runs (see README, "Backups"): one ``litestream replicate`` process per
fleet, a child of ``reconcile daemon`` (``Supervisor``: restarted with backoff when it
exits), started with a config generated from the registry (one ``dbs:`` entry per
tenant file — not directory watching), and kept in step between restarts through its
control socket: a pass ``register``s new files and ``unregister``s retired ones.

Invariants:
* a file leaves service (archive, the retirement of a relocation's source, a
  point-in-time restore's replaced file) only after Litestream let go of it
  (``release``: a final sync, then unregister) — Litestream never writes to a retired
  file nor recreates a ``-wal`` at a path about to hold another file;
* a relocation's new file is registered and synced before its old file is retired
  (``handover``); when Litestream runs but cannot confirm, the retirement waits
  (retryable), the tenant keeps serving from its new file;
* a new lineage never inherits Litestream's local state (the ``.NAME.db-litestream``
  directory) of an earlier file at the same path: that is moved to ``_retired/``;
* nothing here stops the fleet: Litestream down or a replica unreachable only makes
  backups lag, which observation reports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from reconciler import litestream, tenantdb
from reconciler.backup import BackupSettings, BackupState, lag_of, lineage_id, lineage_url
from reconciler.context import Logger
from reconciler.desired import Desired, Settings
from reconciler.errors import LockHeld, ReconcileError, RetryableError
from reconciler.lock import FleetLock
from reconciler.registry import Registry, utcnow
from reconciler.state import Snapshot

# registry statuses whose file is in service (and so replicated); ``relocating`` is
# left as it is until its operation ends, ``archived``/``missing`` are not replicated
REPLICATED = frozenset({"active", "pending", "migrating", "failed", "suspended", "orphaned"})
META_SUFFIX = "-litestream"  # Litestream's local state: .<file><suffix> beside the file


@dataclass(frozen=True)
class Lineage:
    tenant: str
    lineage: str
    path: str
    inode: int
    url: str
    started_at: str
    ended_at: str | None = None


def lineages(registry: Registry, tenant: str | None = None) -> list[Lineage]:
    """Recorded lineages, oldest first (one tenant's, or the current ones of all)."""
    if tenant is not None:
        rows = registry.conn.execute(
            "SELECT tenant, lineage, path, inode, url, started_at, ended_at FROM "
            "backup_lineages WHERE tenant = ? ORDER BY lineage", (tenant,)).fetchall()
    else:
        rows = registry.conn.execute(
            "SELECT tenant, lineage, path, inode, url, started_at, ended_at FROM "
            "backup_lineages WHERE ended_at IS NULL ORDER BY tenant").fetchall()
    return [Lineage(*r) for r in rows]


def meta_dir(path: Path) -> Path:
    return path.with_name(f".{path.name}{META_SUFFIX}")


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _retire_meta(path: Path, settings: Settings) -> None:
    """Move an earlier file's Litestream state away (never deleted: gc may)."""
    meta = meta_dir(path)
    if os.path.lexists(meta):
        target = settings.retired_dir / "litestream" / \
            f"{path.stem}-{path.parent.name}-{lineage_id(time.time())}"
        tenantdb.ensure_dir(target.parent)
        os.rename(meta, target)


def lineage_for(registry: Registry, settings: Settings, backup: BackupSettings,
                tenant: str, path: Path, current: Mapping[str, Lineage]) -> Lineage | None:
    """The lineage of the file now at ``path`` (started, and recorded, if it is new).
    None when there is no file. Call inside a registry transaction."""
    inode = _inode(path)
    if inode is None:
        return None
    old = current.get(tenant)
    if old is not None and same_file(old, path, inode, backup):
        return old
    now = time.time()
    new = Lineage(tenant, lineage_id(now), str(path), inode, "", utcnow())
    new = Lineage(new.tenant, new.lineage, new.path, inode,
                  lineage_url(backup.replica, tenant, new.lineage), new.started_at)
    if old is not None:
        registry.conn.execute("UPDATE backup_lineages SET ended_at = ? WHERE tenant = ? AND "
                              "lineage = ?", (utcnow(), tenant, old.lineage))
    _retire_meta(path, settings)
    registry.conn.execute(
        "INSERT INTO backup_lineages (tenant, lineage, path, inode, url, started_at) "
        "VALUES (?, ?, ?, ?, ?, ?)", (tenant, new.lineage, new.path, inode, new.url,
                                      new.started_at))
    return new


def same_file(lin: Lineage, path: Path, inode: int | None, backup: BackupSettings) -> bool:
    """``lin`` is the lineage of the file now at ``path`` (same path, same inode, same
    base replica)."""
    return lin.path == str(path) and lin.inode == inode and \
        lin.url == lineage_url(backup.replica, lin.tenant, lin.lineage)


def end_lineage(registry: Registry, tenant: str) -> None:
    registry.conn.execute("UPDATE backup_lineages SET ended_at = ? WHERE tenant = ? AND "
                          "ended_at IS NULL", (utcnow(), tenant))


def control(settings: Settings) -> litestream.Control | None:
    """The fleet's Litestream, if one is running (its socket exists), else None."""
    sock = litestream.socket_path(settings.central)
    return litestream.Control(sock) if os.path.exists(sock) else None


def _served(snapshot: Snapshot) -> dict[str, Path]:
    return {name: Path(row.path) for name, row in snapshot.tenants.items()
            if row.status in REPLICATED and name not in snapshot.journal}


def sync_registrations(settings: Settings, registry: Registry, log: Logger) -> int:
    """Make Litestream's databases the fleet's files in service: register new files
    (recording their lineage), unregister the rest. Returns how many changed.
    No-op when backups are off or Litestream is not running. Under the fleet lock."""
    backup, ctl = settings.backup, control(settings)
    if backup is None or ctl is None:
        return 0
    try:
        running = ctl.databases()
    except RetryableError as exc:
        log.warning("backups: litestream not answering; registrations wait", error=str(exc))
        return 0
    snapshot = registry.snapshot()
    want = _served(snapshot)
    busy = {str(Path(r.path)) for n, r in snapshot.tenants.items()
            if n not in want and (r.status == "relocating" or n in snapshot.journal)}
    changed = 0
    current = {lin.tenant: lin for lin in lineages(registry)}
    todo = []
    for tenant, path in sorted(want.items()):
        old, inode = current.get(tenant), _inode(path)
        if inode is not None and (old is None or str(path) not in running or
                                  not same_file(old, path, inode, backup)):
            todo.append((tenant, path))
    wanted_paths = {str(p) for p in want.values()}
    # (the registry itself is replicated by a region agent: never a tenant file to drop)
    extra = sorted(set(running) - wanted_paths - busy - {str(settings.central)})
    ended = {t for t in set(current) - set(want) - set(snapshot.journal)
             if (row := snapshot.tenants.get(t)) is None or
             row.status in ("archived", "missing")}
    if not (todo or extra or ended):
        return 0  # the steady state: no registry transaction
    with registry.transaction():
        for tenant, path in todo:
            try:
                if str(path) in running:  # a new file under a path Litestream holds
                    ctl.unregister(path)
                lin = lineage_for(registry, settings, backup, tenant, path, current)
                if lin is None:
                    continue
                litestream.ensure_bucket(lin.url)
                ctl.register(path, lin.url)
                changed += 1
            except ReconcileError as exc:
                log.warning("backups: cannot register", tenant=tenant, error=str(exc))
        for gone in extra:
            with contextlib.suppress(ReconcileError):
                ctl.unregister(Path(gone))
                changed += 1
        for tenant in ended:
            end_lineage(registry, tenant)
    if changed:
        log.info("backups: litestream databases updated", changed=changed,
                 replicated=len(want))
    return changed


def release(settings: Settings, path: Path, wait: float = 15.0) -> None:
    """Before ``path`` leaves service: Litestream syncs what it captured and lets go.
    Nothing to do when backups are off or Litestream is not running; when it is
    starting (socket present, not answering yet) wait up to ``wait`` seconds, then
    raise ``RetryableError`` — the action is retried, nothing was moved."""
    ctl = control(settings) if settings.backup is not None else None
    if ctl is None:
        return
    deadline = time.monotonic() + wait
    while True:
        try:
            ctl.unregister(path)
            return
        except litestream.LitestreamDown as exc:
            if not exc.listening:
                return  # no Litestream runs (a stale socket): nothing holds the file
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def handover(settings: Settings, registry: Registry, tenant: str, new: Path, old: Path,
             timeout: int = 30) -> None:
    """A relocation's new file is replicated (registered, synced) before ``old`` is
    released. Raises ``RetryableError`` when Litestream runs but cannot confirm."""
    backup, ctl = settings.backup, control(settings)
    if backup is None or ctl is None:
        return
    current = {lin.tenant: lin for lin in lineages(registry)}
    with registry.transaction():
        lin = lineage_for(registry, settings, backup, tenant, new, current)
    if lin is not None:
        try:
            litestream.ensure_bucket(lin.url)
            ctl.register(new, lin.url)
            ctl.sync(new, timeout)
        except litestream.LitestreamDown as exc:
            if exc.listening:
                raise  # running but not answering: the retirement waits
            return  # not running: nothing to hand over, nothing holds the old file
    release(settings, old)


def observe(desired: Desired, snapshot: Snapshot, now: float
            ) -> Mapping[str, BackupState] | None:
    """Each replicated tenant's backup as Litestream reports it (None: backups off).
    Litestream not running: every tenant's lag is unknown, with the reason."""
    settings = desired.settings
    if settings.backup is None:
        return None
    want = _served(snapshot)
    ctl = control(settings)
    running: dict[str, litestream.Replicated] = {}
    down = "replication is not running (start `reconcile daemon`)"
    if ctl is not None:
        try:
            running, down = ctl.databases(), ""
        except RetryableError as exc:
            down = f"litestream is not answering ({exc})"
    out: dict[str, BackupState] = {}
    for tenant, path in want.items():
        rep = running.get(str(path))
        if rep is None:
            out[tenant] = BackupState(tenant, None, error=down or "not replicated yet")
            continue
        out[tenant] = BackupState(tenant, None, rep.txid, rep.synced_at,
                                  lag_of(rep.synced_at, now), rep.error)
    return MappingProxyType(out)


# --------------------------------------------------------------------------- supervisor

RESTART_MIN, RESTART_MAX, STABLE_AFTER = 1.0, 60.0, 60.0


class Supervisor:
    """Runs ``litestream replicate`` for the daemon: generated config, restarted with
    exponential backoff (1 s doubling to 60 s, reset after a minute up) whenever it
    exits, each exit logged as an error and reported through ``on_event``."""

    def __init__(self, settings: Settings, log: Logger,
                 on_event: Callable[[str, dict[str, object]], None] | None = None,
                 registry: str | None = None) -> None:
        self.settings = settings
        # issue 15: where a region agent's own central.db replicates (None: not at all)
        self.registry = registry
        self.log = log
        self.on_event = on_event or (lambda _what, _detail: None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def backup(self) -> BackupSettings:
        assert self.settings.backup is not None
        return self.settings.backup

    def config(self) -> str:
        sock = litestream.socket_path(self.settings.central)
        dbs: list[tuple[Path, str]] = []
        with Registry.reading(self.settings.central) as reg:
            if reg is not None and reg.version >= 1 and _has_lineages(reg):
                served = _served(reg.snapshot())
                for lin in lineages(reg):
                    p = served.get(lin.tenant)
                    if p is not None and str(p) == lin.path and _inode(p) == lin.inode:
                        dbs.append((p, lin.url))
        if self.registry is not None and self.settings.central.exists():
            dbs.append((self.settings.central, self.registry))
        return litestream.config_text(self.backup, sock, dbs)

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="litestream", daemon=True)
        self._thread.start()
        return self

    def _prepare(self) -> None:
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
                for tenant, path in sorted(_served(snapshot).items()):
                    old = current.get(tenant)
                    if old is None or not same_file(old, path, _inode(path), backup):
                        lineage_for(registry, self.settings, backup, tenant, path, current)
        self._with_registry(record, "recording lineages before start")

    def _with_registry(self, work: Callable[[Registry], object], what: str) -> None:
        """``work`` on the registry under the fleet lock; skipped when a pass holds the
        lock (the pass does the same at its end) or there is no registry yet."""
        lock = FleetLock(self.settings.central)
        try:
            lock.acquire(wait=False)
        except LockHeld:
            return
        try:
            if not os.path.exists(self.settings.central):
                return
            registry = Registry.open(self.settings.central)
            try:
                work(registry)
            finally:
                registry.close()
        except (ReconcileError, OSError, sqlite3.Error) as exc:
            self.log.warning(f"backups: {what} failed", error=str(exc))
        finally:
            lock.release()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self._prepare()
        where = self.settings.central.parent / ".litestream.yml"
        tenantdb.ensure_dir(where.parent)
        with litestream.config_file(self.config(), where):
            pass
        for url in {u for u in _urls(self.config())}:
            with contextlib.suppress(ReconcileError):
                litestream.ensure_bucket(url)
        return subprocess.Popen([litestream.binary(), "replicate", "-no-expand-env",
                                 "-config", str(where)], stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=die_with_parent)

    def _run(self) -> None:
        delay = RESTART_MIN
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.proc = self._spawn()
            except (ReconcileError, OSError) as exc:
                self.log.error("backups: cannot start litestream", error=str(exc))
                self.proc = None
            else:
                self.log.info("backups: litestream started", pid=self.proc.pid,
                              restarts=self.restarts)
                if self.wait_ready(10.0):
                    self._register()
                code = self.proc.wait()
                if self._stop.is_set():
                    return
                self.restarts += 1
                self.log.error("backups: litestream exited; restarting", exit_code=code,
                               restarts=self.restarts, backoff_s=delay)
                self.on_event("litestream-exit", {"exit_code": code,
                                                  "restarts": self.restarts})
            if time.monotonic() - started > STABLE_AFTER:
                delay = RESTART_MIN
            if self._stop.wait(delay):
                return
            delay = min(RESTART_MAX, delay * 2)

    def _register(self) -> None:
        """Bring a fresh Litestream up to date with the registry (files created while it
        was down)."""
        self._with_registry(lambda reg: sync_registrations(self.settings, reg, self.log),
                            "registering after start")

    def wait_ready(self, timeout: float = 30.0) -> bool:
        ctl = litestream.Control(litestream.socket_path(self.settings.central))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ctl.alive():
                return True
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (Litestream syncs what it captured), then wait; SIGKILL after
        ``timeout``."""
        self._stop.set()
        if self.proc is not None:
            litestream.terminate(self.proc, timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(litestream.socket_path(self.settings.central))


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the daemon dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``), so a restarted daemon never finds a second Litestream
    replicating the same files. Its own session keeps a terminal's Ctrl-C away from it:
    the daemon stops it after finishing its pass."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _has_lineages(reg: Registry) -> bool:
    return reg.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'backup_lineages'"
                            ).fetchone() is not None


def _urls(config: str) -> Iterator[str]:
    import json
    for db in json.loads(config).get("dbs", []):
        yield str(db["replica"]["url"])
