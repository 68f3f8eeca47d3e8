"""The central registry ``central.db``: opening it, upgrading it, and its tenants' rows.

Why: applications route requests with it and read global settings from it, and the
reconciler records what it did in it. Its tables (``tenants``, ``domains``,
``settings``, ``migrations``, ``events``) are a public contract (DESIGN §4); the rest
(``journal``, ``runs``, ``rollout``) is the reconciler's own bookkeeping. The schema
(``UPGRADES``, ``VERSION``) lives in ``registryschema`` and is re-exported here.
``Registry`` is composed by concept: the connection and its transactions
(``registryconn``), issue 15's agent rows and handoffs (``registryagents``), the journal
of unfinished operations (``registryjournal``), the history (``registryhistory``) and
the memory of schema drift (``registrydrift``); callers import ``Registry`` (and
``utcnow``, the row values) from here.

Invariants:
* the registry is versioned by its own ``PRAGMA user_version`` and upgraded step by
  step, each step in one transaction, so an old registry is never half-upgraded;
* it runs in WAL mode so applications keep reading while the reconciler writes;
* it is only ever written by the process holding the fleet lock, from one thread;
* a registry written by a newer reconciler is refused rather than misread.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from reconciler import ownership, readonly
from reconciler.errors import PermanentError
from reconciler.registryagents import SEQ_NOW, AgentRows
from reconciler.registryconn import classify
from reconciler.registrydrift import DriftRows, decode_keys
from reconciler.registryhistory import HistoryRows
from reconciler.registryjournal import JournalRows
from reconciler.registryschema import UPGRADES as UPGRADES
from reconciler.registryschema import VERSION as VERSION
from reconciler.registryschema import has_column, split_script
from reconciler.registryschema import utcnow as utcnow
from reconciler.state import STATUSES as STATUSES
from reconciler.state import AgentRow as AgentRow
from reconciler.state import JournalRow as JournalRow
from reconciler.state import RegionRow as RegionRow
from reconciler.state import Snapshot as Snapshot
from reconciler.state import TenantRow as TenantRow

T = TypeVar("T")

_TENANT_COLS = ("name, region, path, schema_version, status, failure, failed_key, failures, "
                "retry_at, protected")


assert ", ".join(TenantRow._fields) == _TENANT_COLS


def _tenant_row(r: tuple[Any, ...]) -> TenantRow:
    # ``protected`` (last) is stored as 0/1; the rest is already what its field holds
    return tuple.__new__(TenantRow, (*r[:-1], bool(r[-1])))


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, isolation_level=None,
                               timeout=10.0, check_same_thread=False)
    else:
        # used by one thread at a time, not always the one that opened it (apply's workers)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0,
                               check_same_thread=False)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > VERSION:  # refuse before changing a byte (journal_mode writes)
            conn.close()
            raise PermanentError(f"registry {path} is at version {version}, newer than this "
                                 f"reconciler understands ({VERSION}); upgrade tenant-reconciler")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Registry(AgentRows, JournalRows, HistoryRows, DriftRows):
    """A connection to central.db with the operations the reconciler needs."""

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: Path) -> Registry:
        """Open for writing, creating and upgrading as needed (lock holder only)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        try:
            conn = _connect(path, readonly=False)
            reg = cls(path, conn, readonly=False)
            reg._upgrade()
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc) or "unable to open" in str(exc):
                raise PermanentError(
                    f"cannot open the registry {path} for writing ({exc}): a command that "
                    f"changes the fleet needs write access to it and to its folder (SQLite "
                    f"creates {path.name}-wal and -shm there); the "
                    f"{ownership.describe(path.parent)}") from exc
            raise classify(exc, f"opening registry {path}") from exc
        return reg

    @classmethod
    def open_readonly(cls, path: Path) -> Registry | None:
        """Open without changing anything; None if there is no registry yet."""
        if not path.exists():
            return None
        try:
            conn = _connect(path, readonly=True)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise PermanentError(f"cannot read registry {path}: {exc}") from exc
        if version > VERSION:
            conn.close()
            raise PermanentError(f"registry {path} is at version {version}, newer than this "
                                 f"reconciler understands ({VERSION}); upgrade tenant-reconciler")
        return cls(path, conn, readonly=True)

    @classmethod
    @contextmanager
    def reading(cls, path: Path) -> Iterator[Registry | None]:
        """``open_readonly`` for one block (None when there is no registry yet), closed
        after it. For the daemon's own threads (health checks, notifications), which may
        run while its pass holds the registry open for writing: SQLite's own connection
        shares the process's locks, where ``read``'s raw descriptor would drop them. Read-
        only commands use ``read`` instead (it leaves no file behind)."""
        reg = cls.open_readonly(path)
        try:
            yield reg
        finally:
            if reg is not None:
                reg.close()

    @classmethod
    def read(cls, path: Path, fn: Callable[[Registry], T], missing: T) -> T:
        """``fn(registry)`` on a read-only view of the registry at ``path``, or
        ``missing`` when there is no registry file yet. Works with read access only and
        leaves no file and no byte behind (``readonly.read``: ``fn`` may run more than
        once and must only read). Raises ``PermanentError`` (unreadable, or newer than
        this reconciler) or ``PermissionError`` (no read access to ``path``).

        Never call it while this process holds the registry open for writing (e.g. from
        another thread during a pass): closing its descriptor would drop that
        connection's POSIX locks (see ``readonly``); use the open ``Registry`` then."""
        def run(conn: sqlite3.Connection) -> T:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > VERSION:
                raise PermanentError(f"registry {path} is at version {version}, newer than "
                                     f"this reconciler understands ({VERSION}); upgrade "
                                     "tenant-reconciler")
            return fn(cls(path, conn, readonly=True))
        try:
            return readonly.read(path.absolute(), run)
        except FileNotFoundError as exc:
            if exc.filename is not None and Path(exc.filename) != path:
                raise
            return missing
        except sqlite3.DatabaseError as exc:
            raise PermanentError(f"cannot read registry {path}: {exc}") from exc

    def _upgrade(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > VERSION:
            raise PermanentError(f"registry {self.path} is at version {version}, newer than "
                                 f"this reconciler understands ({VERSION}); upgrade it")
        for step in range(version, VERSION):
            with self.transaction():
                for statement in split_script(UPGRADES[step]):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {step + 1}")

    # ---------------------------------------------------------------- reading
    def snapshot(self) -> Snapshot:
        c = self.conn
        version = self.version
        have = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version == 0 or "tenants" not in have:
            return Snapshot.empty()
        c.execute("BEGIN")  # one consistent read across tables
        try:
            tenants = {r[0]: _tenant_row(r)
                       for r in c.execute(f"SELECT {_TENANT_COLS} FROM tenants")}
            domains = dict(c.execute("SELECT domain, tenant FROM domains").fetchall())
            settings = dict(c.execute("SELECT key, value FROM settings").fetchall())
            migrations = {r[0]: (r[1], r[2]) for r in
                          c.execute("SELECT version, name, sha256 FROM migrations")}
            unconfirmed = frozenset(r[0] for r in c.execute(
                "SELECT version FROM migrations WHERE applied = 0")) \
                if has_column(c, "migrations", "applied") else frozenset()
            journal: dict[str, JournalRow] = {}
            rollout: dict[str, str] = {}
            fleet: dict[str, str] = {}
            if "fleet" in have:
                fleet = dict(c.execute("SELECT key, value FROM fleet").fetchall())
            if "journal" in have:
                journal = {r[0]: JournalRow(*r) for r in c.execute(
                    "SELECT tenant, action, phase, source, dest, temp, started_at, detail "
                    "FROM journal")}
                rollout = dict(c.execute("SELECT key, state FROM rollout").fetchall())
            schema_keys: dict[str, bytes] = {}
            drift: dict[str, str] = {}
            if "schema_checks" in have:
                found = c.execute("SELECT format, keys FROM schema_keys").fetchone()
                schema_keys = decode_keys(*found) if found is not None else {}
                drift = dict(c.execute("SELECT path, drift FROM schema_checks").fetchall())
        finally:
            c.execute("COMMIT")
        return Snapshot(True, MappingProxyType(tenants), MappingProxyType(domains),
                        MappingProxyType(settings), MappingProxyType(migrations),
                        MappingProxyType(journal), MappingProxyType(rollout), unconfirmed,
                        MappingProxyType(fleet), schema_keys, MappingProxyType(drift))

    def tenant(self, name: str) -> TenantRow | None:
        r = self.conn.execute(f"SELECT {_TENANT_COLS} FROM tenants WHERE name = ?",
                              (name,)).fetchone()
        if r is None:
            return None
        return _tenant_row(r)

    def route(self, domain: str) -> tuple[str, Path, str, int, str] | None:
        """``(name, path, region, schema_version, status)`` of the tenant routed at
        ``domain`` (normalised), or None; the lookup ``routing.Router`` makes."""
        if self.version < 1:
            return None
        r = self.conn.execute(
            "SELECT t.name, t.path, t.region, t.schema_version, t.status FROM domains AS d "
            "JOIN tenants AS t ON t.name = d.tenant WHERE d.domain = ?", (domain,)).fetchone()
        return None if r is None else (r[0], Path(r[1]), r[2], int(r[3]), r[4])

    def next_retry_at(self, after: float) -> float | None:
        """Earliest backoff expiry (epoch seconds) of a failed tenant later than ``after``:
        when the daemon must wake up to retry it."""
        if self.version < 1:
            return None
        r = self.conn.execute("SELECT MIN(retry_at) FROM tenants WHERE status = 'failed' "
                              "AND retry_at > ?", (after,)).fetchone()
        return None if r is None or r[0] is None else float(r[0])

    # ---------------------------------------------------------------- writing
    def upsert_tenant(self, name: str, region: str, path: Path, schema_version: int,
                      status: str, protected: bool = False) -> None:
        now = utcnow()
        self.conn.execute(
            "INSERT INTO tenants (name, region, path, schema_version, status, created_at, "
            f"updated_at, protected, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, {SEQ_NOW}) "
            "ON CONFLICT(name) DO UPDATE SET region=excluded.region, path=excluded.path, "
            "schema_version=excluded.schema_version, status=excluded.status, "
            "updated_at=excluded.updated_at, protected=excluded.protected, seq=excluded.seq",
            (name, region, str(path), schema_version, status, now, now, int(protected)))

    def update_tenant(self, name: str, **fields: Any) -> None:
        allowed = {"region", "path", "schema_version", "status", "protected", "failure",
                   "failed_key", "failures", "retry_at", "generation"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown tenant fields: {bad}")
        if not fields:
            return
        assignments = ", ".join(f"{k} = ?" for k in fields) + ", updated_at = ?"
        values = [str(v) if isinstance(v, Path) else v for v in fields.values()]
        self.conn.execute(f"UPDATE tenants SET {assignments} WHERE name = ?",
                          (*values, utcnow(), name))

    def record_migration(self, version: int, name: str, sha256: str) -> None:
        """A tenant committed this migration: its record (made by ``intend_migration``
        before, or now) is confirmed; a confirmed record never changes."""
        self.conn.execute("INSERT INTO migrations (version, name, sha256, first_applied_at, "
                          "applied) VALUES (?, ?, ?, ?, 1) ON CONFLICT (version) DO UPDATE "
                          "SET applied = 1, first_applied_at = excluded.first_applied_at "
                          "WHERE migrations.applied = 0", (version, name, sha256, utcnow()))

    def intend_migration(self, version: int, name: str, sha256: str) -> None:
        """Record a migration's checksum before its first use on any tenant (unconfirmed,
        ``applied = 0``). An unconfirmed record takes the file's current checksum: the
        caller has verified that no tenant file holds that version (``engine``)."""
        self.conn.execute("INSERT INTO migrations (version, name, sha256, first_applied_at, "
                          "applied) VALUES (?, ?, ?, ?, 0) ON CONFLICT (version) DO UPDATE "
                          "SET name = excluded.name, sha256 = excluded.sha256, "
                          "first_applied_at = excluded.first_applied_at "
                          "WHERE migrations.applied = 0", (version, name, sha256, utcnow()))

    def set_setting(self, key: str, value: str | None) -> None:
        if value is None:
            self.conn.execute("DELETE FROM settings WHERE key = ?", (key,))
        else:
            self.conn.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) "
                              "DO UPDATE SET value = excluded.value", (key, value))

    def set_domain(self, domain: str, tenant: str | None) -> None:
        if tenant is None:
            self.conn.execute("DELETE FROM domains WHERE domain = ?", (domain,))
        else:
            self.conn.execute("INSERT INTO domains (domain, tenant) VALUES (?, ?) "
                              "ON CONFLICT(domain) DO UPDATE SET tenant = excluded.tenant",
                              (domain, tenant))

    def set_fleet(self, values: Mapping[str, str]) -> None:
        """Record the fleet's identity (``fleet`` table: key → value)."""
        self.conn.executemany("INSERT INTO fleet (key, value) VALUES (?, ?) ON CONFLICT(key) "
                              "DO UPDATE SET value = excluded.value", sorted(values.items()))

    def delete_domains(self, tenant: str) -> None:
        self.conn.execute("DELETE FROM domains WHERE tenant = ?", (tenant,))

    def set_rollout(self, key: str, state: str | None, detail: Mapping[str, Any] | None = None
                    ) -> None:
        if state is None:
            self.conn.execute("DELETE FROM rollout WHERE key = ?", (key,))
        else:
            self.conn.execute("INSERT INTO rollout (key, state, updated_at, detail) VALUES "
                              "(?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET state=excluded.state,"
                              " updated_at=excluded.updated_at, detail=excluded.detail",
                              (key, state, utcnow(), json.dumps(dict(detail or {}))))

    def clear_rollouts(self, keep: str | None = None) -> int:
        """Forget finished rollouts (every row but ``keep``); returns how many."""
        return self.conn.execute("DELETE FROM rollout WHERE key IS NOT ?", (keep,)).rowcount
