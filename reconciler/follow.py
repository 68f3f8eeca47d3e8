"""A region agent's side of the registries (issue 15, DESIGN §10): its own registry
replicated and kept visibly alive, every other region's registry followed read-only.

Why a module of its own: routing and ``status`` on any host must know which region
holds a tenant and how old that knowledge is, and the agents need the same to hand
tenants to each other. We write no replication of our own: Litestream copies each
agent's ``central.db`` to ``backup.registry_url(replica, region)`` (the daemon's
``replication.Supervisor`` lists it beside the tenant files) and every other host runs
``litestream restore -f`` (follow mode) into ``<data_dir>/_follow/<region>.db``.

Invariants:
* ``Heartbeat``: the agent row (region, host, revision, ``heartbeat_at``) is refreshed
  about every second in its own one-statement transactions, from its own connection —
  also during a long pass — so a follower's copy tells how old it is
  (``peers.read_view``: age = now − heartbeat). The ``regions`` table is rewritten when
  the desired regions change. It never creates the registry (the first pass does) and
  a busy or missing registry only skips a beat;
* ``Follower``: one ``litestream restore -f`` per other region, restarted with
  exponential backoff (1 s doubling to 10 s, reset after a minute up) whenever it exits;
  a copy that cannot be resumed (Litestream says so, or the copy's saved position lies
  beyond the replica's last transaction: checked before each start) is moved to
  ``<data_dir>/_retired/`` (with its ``-wal``/``-shm``/``-txid``) and restored anew at
  once — never deleted, never read while half-restored (readers see no heartbeat in
  it until it is whole);
* followed copies are only written by Litestream; everything else opens them
  ``mode=ro`` (``peers``);
* every child process gets ``PR_SET_PDEATHSIG`` (dies with the daemon, even on SIGKILL)
  and is stopped (SIGTERM, then SIGKILL) when the agent stops.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from reconciler import litestream, peers, relocate, tenantdb
from reconciler.backup import registry_url
from reconciler.context import Logger
from reconciler.desired import Desired, Settings
from reconciler.errors import ReconcileError
from reconciler.registry import Registry
from reconciler.replication import control, die_with_parent
from reconciler.respawn import Backoff, Exit, Respawned, Respawner, Words
from reconciler.state import RegionRow

BEAT = 1.0  # seconds between heartbeats
#: 1 s doubling to 10 s, back to 1 s after a minute up
RESTARTS = Backoff(first=1.0, most=10.0, stable_after=60.0)
WORDS = Words(started="registry follower started",
              exited="registry follower exited; restarting",
              cannot_start="cannot start registry follower", output="litestream")
#: what ``litestream restore -f`` says when the copy on disk cannot be continued
#: (0.5.17 cmd/litestream/restore.go: "cannot resume follow mode: ...")
UNRESUMABLE = ("cannot resume", "delete ", "already exists")
SIDECARS = ("-wal", "-shm", "-txid")


def region_rows(whole: Desired, own: str | None) -> tuple[RegionRow, ...]:
    """The ``regions`` rows an agent of ``own`` (None: every region) writes: every
    declared region, its endpoint, whether it is this host's, and where this host keeps
    its followed copy of that region's registry (None for its own)."""
    s = whole.settings
    return tuple(RegionRow(name, r.endpoint, own is None or name == own,
                           None if own is None or name == own
                           else os.fspath(peers.copy_path(s, name)))
                 for name, r in sorted(whole.regions.items()))


def host_name() -> str:
    return socket.gethostname()


class Heartbeat:
    """Keeps the ``agent`` row of ``central`` current (see module doc). ``beat``
    seconds between refreshes; ``update`` hands it the current revision and regions."""

    def __init__(self, central: Path, region: str | None, log: Logger,
                 beat: float = BEAT) -> None:
        self.central = central
        self.region = region
        self.host = host_name()
        self.log = log
        self.beat = beat
        self._revision: str | None = None
        self._rows: tuple[RegionRow, ...] | None = None
        self._written_rows: tuple[RegionRow, ...] | None = None
        self._conn: sqlite3.Connection | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the revision and rows handed over
        self._io = threading.Lock()  # one beat at a time on the one connection
        self._warned = False

    def update(self, revision: str, rows: tuple[RegionRow, ...]) -> None:
        with self._lock:
            self._revision, self._rows = revision, rows

    def start(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.write(time.time())
            self._stop.wait(self.beat)

    def write(self, now: float) -> bool:
        """One beat: the agent row (and the regions rows if they changed). False when
        the registry is missing, too old (before its first pass) or busy."""
        with self._lock:
            revision, rows = self._revision, self._rows
        with self._io:
            return self._write(now, revision, rows)

    def _write(self, now: float, revision: str | None, rows: tuple[RegionRow, ...] | None
               ) -> bool:
        try:
            conn = self._connection()
            if conn is None:
                return False
            reg = Registry(self.central, conn, readonly=False)
            with reg.transaction():
                reg.set_agent(self.region, self.host, revision, now)
                if rows is not None and rows != self._written_rows:
                    reg.set_regions(rows)
            self._written_rows = rows
            self._warned = False
            return True
        except (sqlite3.Error, ReconcileError) as exc:
            if not self._warned:  # once per run of failures, not every second
                self._warned = True
                self.log.warning("heartbeat not written; retrying every beat",
                                 registry=str(self.central), error=str(exc))
            self._drop()
            return False

    def _connection(self) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not self.central.exists():
            return None
        conn = sqlite3.connect(f"{self.central.absolute().as_uri()}?mode=rw", uri=True,
                               isolation_level=None, timeout=0.5, check_same_thread=False)
        if conn.execute("PRAGMA user_version").fetchone()[0] < peers.PEER_SCHEMA:
            conn.close()  # the first pass has not upgraded it yet
            return None
        self._conn = conn
        return conn

    def close(self) -> None:
        with self._io:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.close()


def ensure_registry_replicated(settings: Settings, region: str, log: Logger) -> bool:
    """Make the running Litestream replicate ``central.db`` to its registry URL (it was
    not listed at start-up when the registry did not exist yet). True when it does."""
    ctl, backup = control(settings), settings.backup
    if ctl is None or backup is None or not settings.central.exists():
        return False
    try:
        if str(settings.central) in ctl.databases():
            return True
        url = registry_url(backup.replica, region)
        litestream.ensure_bucket(url)
        ctl.register(settings.central, url)
    except ReconcileError as exc:
        log.warning("registry replication not started yet", error=str(exc))
        return False
    log.info("registry replicated", url=registry_url(backup.replica, region))
    return True


class Follower(Respawned):
    """``litestream restore -f`` of one region's registry into this host's copy, kept
    running by a ``respawn.Respawner`` (limits: ``RESTARTS``)."""

    def __init__(self, settings: Settings, region: str, log: Logger) -> None:
        assert settings.backup is not None
        self.settings = settings
        self.region = region
        self.url = registry_url(settings.backup.replica, region)
        self.copy = peers.copy_path(settings, region)
        self.log = log
        self.retired: list[Path] = []
        self._respawn = Respawner(
            f"follow-{region}", self._spawn,
            log.bind(region=region, url=self.url, copy=str(self.copy)), RESTARTS, WORDS,
            on_exit=self._exited, ignore=("applied updates",))

    def _command(self) -> list[str]:
        assert self.settings.backup is not None
        every = min(1.0, self.settings.backup.sync_interval)
        return [litestream.binary(), "restore", "-f", "-follow-interval",
                f"{max(100, round(every * 1000))}ms", "-o", str(self.copy), self.url]

    def _exited(self, ended: Exit) -> bool:
        """A copy Litestream says it cannot resume is retired and restored anew at once
        (True); any other exit waits for the backoff."""
        if not (self.copy.exists() and any(w in ended.said for w in UNRESUMABLE)):
            return False
        self.log.warning("registry copy cannot be resumed: retired, restoring anew",
                         region=self.region, retired=str(self._retire()),
                         litestream=ended.said)
        return True

    def _spawn(self) -> subprocess.Popen[bytes]:
        """One follower process, its output piped (``respawn`` reads it); a copy whose
        saved position lies beyond the replica is retired first."""
        tenantdb.ensure_dir(self.copy.parent)
        with contextlib.suppress(ReconcileError):
            litestream.ensure_bucket(self.url)  # restore from a bucket not made yet
        ahead = self._ahead()
        if ahead is not None:
            self.log.warning("registry copy cannot be resumed: retired, restoring anew",
                             region=self.region, retired=str(self._retire()), reason=ahead)
        return subprocess.Popen(self._command(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent,
                                umask=litestream.PRIVATE_UMASK)

    def _ahead(self) -> str | None:
        """Why the copy cannot continue from the replica — its saved position
        (``<copy>-txid``, written by Litestream) lies beyond the replica's last
        transaction (the replica was wiped and started anew) — or None. Litestream
        0.5.17 does not always refuse such a copy itself: it then follows nothing,
        silently. Unknown (the store is unreachable): None, the follower decides."""
        try:
            saved = int(Path(f"{self.copy}-txid").read_text().strip(), 16)
        except (OSError, ValueError):
            return None
        if not self.copy.exists():
            return None
        try:
            top = max((f.max_txid for f in litestream.ltx_files(self.url, 30.0)), default=0)
        except ReconcileError:
            return None
        if saved <= top:
            return None
        return f"the copy is at transaction {saved:x}, its replica ends at {top:x}"

    def _retire(self) -> Path:
        """Move the copy and its sidecars to ``_retired/`` (gc deletes them later)."""
        retired = self.settings.retired_dir
        tenantdb.ensure_dir(retired)
        dest = relocate.free_name(retired, f"_follow_{self.region}")
        for suffix in SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.copy}{suffix}", f"{dest}{suffix}")
        os.replace(self.copy, dest)
        self.retired.append(dest)
        return dest

    def kill(self) -> None:
        """SIGKILL the current follower process (tests: a follower that dies)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def stop(self) -> None:
        self._respawn.stop(kill_after=5.0, join=10.0)


class Followers:
    """A ``Follower`` for every declared region but the agent's own."""

    def __init__(self, log: Logger) -> None:
        self.log = log
        self.running: dict[str, Follower] = {}

    def update(self, settings: Settings, regions: Iterable[str]) -> None:
        """Follow exactly ``regions`` with ``settings`` (a changed replica, data
        directory or sync interval restarts the followers concerned)."""
        want = set(regions) if settings.backup is not None else set()
        for name, f in list(self.running.items()):
            if name not in want or f.settings.backup != settings.backup or \
                    f.copy != peers.copy_path(settings, name):
                f.stop()
                del self.running[name]
        for name in sorted(want - set(self.running)):
            self.running[name] = Follower(settings, name, self.log).start()

    def stop(self) -> None:
        for f in self.running.values():
            f.stop()
        self.running.clear()

