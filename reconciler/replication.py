"""Every active tenant replicated by Litestream: which files, to where, and whether the
backups are good (issue 14, DESIGN §9).

Why: Litestream copies SQLite files continuously but knows nothing of tenants. This
module keeps its set of databases equal to the fleet's files in service, records each
file's replica location (a *lineage*, ``backup_lineages`` in ``central.db``), and turns
what Litestream reports into observed state.

How Litestream runs (see README, "Backups"): ``litestream replicate`` processes,
children of ``reconcile daemon`` (``Supervisor``), each restarted with backoff when it
exits, each with a config generated from the registry (one ``dbs:`` entry per tenant
file — not directory watching) and a control socket of its own; between restarts a pass
``register``s new files and ``unregister``s retired ones through those sockets. A
fleet is split across ``settings.backup.processes`` processes (default: enough that
none holds more than ``backup.per_process`` files — one process runs out of file
descriptors at ~4,000 databases), each tenant always in the process
``backup.shard_of(tenant, n)``; the daemon records ``n`` beside ``central.db``
(``.litestream-processes``) so one-shot commands address the same processes.

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
* a file is registered in one process only: the process of its tenant's shard (a file
  found in another — the process count changed — is unregistered there first);
  ``release`` asks every running process, so it holds whatever the count;
* nothing here stops the fleet: Litestream down or a replica unreachable only makes
  backups lag, which observation reports.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from reconciler import backup as backup_rules
from reconciler import litestream, tenantdb, walindex
from reconciler.backup import BackupSettings, BackupState, lag_of, lineage_id, lineage_url
from reconciler.context import Logger
from reconciler.desired import Desired, Settings
from reconciler.errors import ReconcileError, RetryableError
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


def inode_of(path: Path) -> int | None:
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
    inode = inode_of(path)
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


PROCESSES_FILE = ".litestream-processes"  # the daemon's process count, beside central.db


def process_total(settings: Settings) -> int:
    """How many Litestream processes the daemon runs for this fleet (1 when it never
    recorded a count)."""
    try:
        return max(1, int((settings.central.parent / PROCESSES_FILE).read_text()))
    except (OSError, ValueError):
        return 1


def controls(settings: Settings) -> dict[int, litestream.Control]:
    """The fleet's running Litestream processes (their sockets exist), by shard."""
    out = {}
    for shard in range(process_total(settings)):
        sock = litestream.socket_path(settings.central, shard)
        if os.path.exists(sock):
            out[shard] = litestream.Control(sock)
    return out


def control(settings: Settings, tenant: str = "") -> litestream.Control | None:
    """The Litestream process that replicates ``tenant`` (its shard), if it is running
    (its socket exists), else None."""
    shard = backup_rules.shard_of(tenant, process_total(settings))
    return controls(settings).get(shard)


def in_service(snapshot: Snapshot) -> dict[str, Path]:
    return {name: Path(row.path) for name, row in snapshot.tenants.items()
            if row.status in REPLICATED and name not in snapshot.journal}


def sync_registrations(settings: Settings, registry: Registry, log: Logger) -> int:
    """Make Litestream's databases the fleet's files in service: register new files
    (recording their lineage) in their tenant's process, unregister the rest. Returns
    how many changed. No-op when backups are off or Litestream is not running; a
    process that does not answer keeps its registrations until a later pass. Under the
    fleet lock."""
    backup, ctls = settings.backup, controls(settings)
    if backup is None or not ctls:
        return 0
    count = process_total(settings)
    running: dict[str, int] = {}  # path -> the process holding it
    for shard, ctl in ctls.items():
        try:
            running.update(dict.fromkeys(ctl.paths(), shard))
        except RetryableError as exc:
            log.warning("backups: litestream not answering; registrations wait",
                        process=shard, error=str(exc))
            ctls = {k: c for k, c in ctls.items() if k != shard}
    if not ctls:
        return 0
    snapshot = registry.snapshot()
    want = in_service(snapshot)
    busy = {str(Path(r.path)) for n, r in snapshot.tenants.items()
            if n not in want and (r.status == "relocating" or n in snapshot.journal)}
    changed = 0
    current = {lin.tenant: lin for lin in lineages(registry)}
    todo = []
    for tenant, path in sorted(want.items()):
        old, shard = current.get(tenant), backup_rules.shard_of(tenant, count)
        if shard not in ctls:
            continue  # its process is down: it registers its files when it starts
        inode = inode_of(path)
        if inode is not None and (old is None or running.get(str(path)) != shard or
                                  not same_file(old, path, inode, backup)):
            todo.append((tenant, path, shard))
    wanted_paths = {str(p) for p in want.values()}
    # (the registry itself is replicated by a region agent: never a tenant file to drop)
    extra = sorted(set(running) - wanted_paths - busy - {str(settings.central)})
    ended = {t for t in set(current) - set(want) - set(snapshot.journal)
             if (row := snapshot.tenants.get(t)) is None or
             row.status in ("archived", "missing")}
    if not (todo or extra or ended):
        return 0  # the steady state: no registry transaction
    pending: dict[int, list[tuple[str, Path, str]]] = {}  # per process, to register
    with registry.transaction():
        for tenant, path, shard in todo:
            try:
                holder = running.get(str(path))
                if holder is not None and holder in ctls:  # a new file at a held path,
                    ctls[holder].unregister(path)          # or held by another process
                lin = lineage_for(registry, settings, backup, tenant, path, current)
                if lin is None:
                    continue
                litestream.ensure_bucket(lin.url)
                pending.setdefault(shard, []).append((tenant, path, lin.url))
            except ReconcileError as exc:
                log.warning("backups: cannot register", tenant=tenant, error=str(exc))
        for gone in extra:
            if running[gone] in ctls:
                with contextlib.suppress(ReconcileError):
                    ctls[running[gone]].unregister(Path(gone))
                    changed += 1
        for tenant in ended:
            end_lineage(registry, tenant)
    done, failed = _register_all(ctls, pending)
    changed += done
    for tenant, error in failed:
        log.warning("backups: cannot register", tenant=tenant, error=error)
    if changed:
        log.info("backups: litestream databases updated", changed=changed,
                 replicated=len(want), processes=count)
    return changed


def _register_all(ctls: Mapping[int, litestream.Control],
                  pending: Mapping[int, list[tuple[str, Path, str]]]
                  ) -> tuple[int, list[tuple[str, str]]]:
    """Register each process's new files, the processes in parallel (one thread each,
    its files one request after another): a pass that created thousands of tenants
    waits for the slowest process, not for all of them in turn. Returns how many were
    registered and the (tenant, error) of those that were not."""
    def one(shard: int) -> tuple[int, list[tuple[str, str]]]:
        n, failed = 0, []
        for tenant, path, url in pending[shard]:
            try:
                ctls[shard].register(path, url)
                n += 1
            except ReconcileError as exc:
                failed.append((tenant, str(exc)))
        return n, failed
    if len(pending) <= 1:
        results = [one(k) for k in pending]
    else:
        with ThreadPoolExecutor(max_workers=len(pending),
                                thread_name_prefix="litestream-register") as pool:
            results = list(pool.map(one, pending))
    return sum(n for n, _ in results), [f for _, fs in results for f in fs]


def release(settings: Settings, path: Path, wait: float = 15.0) -> None:
    """Before ``path`` leaves service: Litestream syncs what it captured and lets go —
    every running process is asked (unregistering a file a process does not hold is a
    no-op), so the file is let go whichever process held it. Nothing to do when backups
    are off or Litestream is not running; when a process is starting (socket present,
    not answering yet) wait up to ``wait`` seconds, then raise ``RetryableError`` —
    the action is retried, nothing was moved."""
    if settings.backup is None:
        return
    deadline = time.monotonic() + wait
    for ctl in controls(settings).values():
        while True:
            try:
                ctl.unregister(path)
                break
            except litestream.LitestreamDown as exc:
                if not exc.listening:
                    break  # no Litestream runs there (a stale socket): it holds nothing
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def handover(settings: Settings, registry: Registry, tenant: str, new: Path, old: Path,
             timeout: int = 30) -> None:
    """A relocation's new file is replicated (registered, synced) before ``old`` is
    released. Raises ``RetryableError`` when Litestream runs but cannot confirm. The
    tenant's process not running: nothing to hand over (it registers the new file when
    it starts); the old file is still released from any other process."""
    backup, ctl = settings.backup, control(settings, tenant)
    if backup is None:
        return
    if ctl is not None:
        current = {lin.tenant: lin for lin in lineages(registry)}
        with registry.transaction():
            lin = lineage_for(registry, settings, backup, tenant, new, current)
        try:
            if lin is not None:
                litestream.ensure_bucket(lin.url)
                ctl.register_for_sync(new, lin.url)
                ctl.sync(new, timeout)
        except litestream.LitestreamDown as exc:
            if exc.listening:
                raise  # running but not answering: the retirement waits
    release(settings, old)


def observe(desired: Desired, snapshot: Snapshot, now: float
            ) -> Mapping[str, BackupState] | None:
    """Each replicated tenant's backup as Litestream reports it (None: backups off).
    Litestream not running: every tenant's lag is unknown, with the reason."""
    settings = desired.settings
    if settings.backup is None:
        return None
    want = in_service(snapshot)
    ctls, count = controls(settings), process_total(settings)
    running: dict[str, litestream.Replicated] = {}
    down: dict[int, str] = {}  # shard -> why its tenants' state is unknown
    for shard, ctl in ctls.items():
        try:
            running.update(ctl.databases())
        except RetryableError as exc:
            down[shard] = f"litestream is not answering ({exc})"
    out: dict[str, BackupState] = {}
    for tenant, path in want.items():
        rep = running.get(str(path))
        if rep is None:
            shard = backup_rules.shard_of(tenant, count)
            why = down.get(shard) or ("not replicated yet" if shard in ctls else
                                      "replication is not running (start `reconcile daemon`)")
            out[tenant] = BackupState(tenant, None, error=why)
            continue
        out[tenant] = BackupState(tenant, None, rep.txid, rep.synced_at,
                                  lag_of(rep.synced_at, now), rep.error, rep.synced_offset)
    return MappingProxyType(out)


#: Litestream 0.5.17's error once the last commit it shipped of a file was never
#: published there and had grown it (see ``unstick``)
_STUCK = re.compile(r"read database page \d+: EOF")
#: seconds between the two looks that must both find Litestream past what SQLite published
RECHECK = 2.0


def _ahead(offsets: Mapping[str, int | None], want: Mapping[str, Path]) -> set[str]:
    """Tenants whose Litestream (``offsets``: tenant → its last synced -wal offset) has
    synced past the end of what SQLite published."""
    return {t for t, offset in offsets.items()
            if (path := want.get(t)) is not None and walindex.past_published(path, offset)}


def unstick(settings: Settings, registry: Registry,
            backups: Mapping[str, BackupState] | None, log: Logger, *,
            check_wal: bool = True) -> list[str]:
    """Restart the replication of each file in service that Litestream has stopped
    replicating because of a commit its writer never finished; the tenants it did.

    Why: Litestream reads the -wal file, not SQLite's wal-index, so it can ship a commit
    whose frames are written but not yet published; when the writer (an application) is
    killed in that gap while another connection keeps the wal-index alive (Litestream's
    own), SQLite never publishes it and the next commits overwrite it. Litestream 0.5.17
    then stops replicating the file: silently, its last synced -wal offset past the end
    SQLite published (``walindex``; checked when ``check_wal``: one read of each file's
    -shm, so the daemon does it every ``WAL_CHECK_EVERY`` s, and twice ``RECHECK`` s
    apart, a commit in flight being the same for a moment), or failing every sync when
    that commit had grown the file ("read database page N: EOF"). Unregistered, its -wal
    emptied (``PRAGMA wal_checkpoint(TRUNCATE)``) and registered again
    (``sync_registrations``, which runs after this in the same pass), it takes a new
    snapshot and catches up (the workaround of
    https://github.com/benbjohnson/litestream/issues/875). Nothing acknowledged is lost:
    the commit that vanished was never acknowledged to its writer, and the replica's
    history keeps it only before the new snapshot. Under the fleet lock, with no tenant
    file open in this process; never raises for one file (tried again next time)."""
    if settings.backup is None or not backups:
        return []
    stuck = {t for t, b in backups.items() if _STUCK.search(b.error or "")}
    if not (stuck or check_wal):
        return []  # the steady state: nothing read
    want = in_service(registry.snapshot())
    if check_wal and (ahead := _ahead({t: b.synced_offset for t, b in backups.items()},
                                      want)):
        time.sleep(RECHECK)
        stuck |= {t for t in ahead if (ctl := control(settings, t)) is not None
                  and _still_past(ctl, want[t])}
    done = []
    for tenant in sorted(stuck):
        path, ctl = want.get(tenant), control(settings, tenant)
        if path is not None and ctl is not None and \
                restart(settings, ctl, tenant, path, log, backups[tenant].error):
            done.append(tenant)
    return done


def past_published(ctl: litestream.Control, path: Path) -> bool:
    """Whether Litestream has synced ``path`` past the end of what SQLite published
    (see ``unstick``). For a file no writer can be committing to (fenced and quiesced):
    one look is enough then. Raises ``RetryableError`` when Litestream does not answer."""
    rep = ctl.databases().get(str(path))
    return rep is not None and walindex.past_published(path, rep.synced_offset)


def _still_past(ctl: litestream.Control, path: Path) -> bool:
    """``past_published``, False when Litestream does not answer (looked at next time)."""
    try:
        return past_published(ctl, path)
    except RetryableError:
        return False


def restart(settings: Settings, ctl: litestream.Control, tenant: str, path: Path,
            log: Logger, error: str | None = None) -> bool:
    """Unregister ``path`` from ``ctl`` and empty its -wal (see ``unstick``); the caller
    (or the pass's ``sync_registrations``) registers it again. False when the -wal
    could not be opened (logged; tried again later)."""
    with contextlib.suppress(ReconcileError):  # it cannot sync what it captured
        ctl.unregister(path, timeout=5)
    try:
        conn = tenantdb.connect(path, settings.busy_timeout)
        try:
            emptied = walindex.empty(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        log.warning("backups: cannot empty the -wal of a file Litestream stopped on",
                    tenant=tenant, error=str(exc))
        return False
    log.warning("backups: Litestream had stopped on a commit its writer never finished; "
                "-wal emptied, registered again", tenant=tenant,
                emptied=emptied, error=error)
    return True


def has_lineages(reg: Registry) -> bool:
    return reg.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'backup_lineages'"
                            ).fetchone() is not None


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the daemon dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``), so a restarted daemon never finds a second Litestream
    replicating the same files. Its own session keeps a terminal's Ctrl-C away from it:
    the daemon stops it after finishing its pass."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
