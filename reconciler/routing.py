"""Host → tenant → connection: the small library applications import (DESIGN §4, §7).

Why: "aaron.yoursaas.com" must reach ``data/eu/aaron.db`` and nothing else, on every
request, fast. The registry (``central.db``) is the only source of truth for that
mapping; this module reads it read-only, caches what it read, and hands out
connections to exactly the file the registry names, with the registry ``ATTACH``-ed
read-only as ``central`` for global settings::

    router = Router("data/central.db")
    with router.connect(environ["HTTP_HOST"], min_schema=3) as db:
        db.execute("INSERT INTO notes (title) VALUES (?)", ("hi",))
        email = db.execute("SELECT value FROM central.settings "
                           "WHERE key = 'support_email'").fetchone()

Invariants:
* a host is normalised (ASCII only, lowercased, one port and one trailing dot
  stripped) and must then be a valid hostname, or ``InvalidHost`` is raised before
  anything is looked up: a host never becomes part of a path, and the only lookup is
  an exact match in ``domains`` — there is no "first label is the tenant" fallback;
* the only file ever opened for a tenant is the absolute ``tenants.path`` the registry
  holds, opened with a ``mode=rw`` URI, so a vanished file is an error and never a new
  empty database; the registry is opened and attached with ``mode=ro``;
* a tenant whose status is not servable (``relocating``, ``missing``, ``archived``,
  ``suspended``, ``failed``), or whose schema is below ``min_schema``, gets
  ``TenantUnavailable`` and no connection;
* the cache is dropped whenever the registry changes (``PRAGMA data_version`` on a held
  read-only connection, one cheap query per request), so a relocation, a new tenant or
  a removed domain is seen on the very next request;
* a connection is returned only after the registry was re-checked *after* the file
  was opened, and every commit re-checks it while holding the file's write lock
  (``TenantConnection``): a relocation marks the tenant ``relocating``, takes that
  write lock before copying and holds it until the registry points at the new file,
  so a write either lands in the live file before the copy or is rolled back;
* a connection handed out can reach only its own tenant's file and read the registry:
  an authorizer (``Connection.set_authorizer``), installed once ``central`` is attached,
  denies ``ATTACH`` and ``DETACH`` (and so ``VACUUM INTO``, which attaches its target),
  any write to ``central``, ``load_extension`` and the pragmas that reach other files or
  corrupt the schema (``isolate``), so an injected query cannot open another tenant;
* ``Router`` is thread-safe; connections are per request (closed by their context
  manager) and are never pooled, because a pooled connection would pin a file that a
  relocation is waiting to retire.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from reconciler.errors import InvalidInput, Problem, ReconcileError

if TYPE_CHECKING:  # imported when first needed: a single host never loads it
    from reconciler import peers

#: statuses a connection may be handed out for (``pending``: a halted rollout leaves the
#: tenant at a known older version; ``migrating``: migrations run in transactions, so
#: readers see one version or the next; ``orphaned``: undeclared but untouched).
SERVABLE = frozenset({"active", "pending", "migrating", "orphaned"})

#: why each unservable status is refused, in words an application can log or show.
REASONS = {
    "relocating": "relocating: its database is being moved to another region; retry shortly",
    "missing": "missing: its database file is gone; an operator must restore it",
    "archived": "archived: the tenant was removed and its database archived",
    "suspended": "suspended: the tenant is suspended",
    "failed": "failed: its last migration failed; an operator must look at it",
}

DEFAULT_BUSY_TIMEOUT = 5.0
MAX_CACHED_HOSTS = 65536  # bounds memory (a few MB) when clients send many bogus hosts

# RFC 1123 hostname: dot-separated labels of letters, digits and inner hyphens, at most
# 63 characters each and 253 in all. ASCII only (checked before lowercasing, because
# str.lower() folds some non-ASCII characters — KELVIN SIGN → "k" — into ASCII).
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*",
    re.ASCII)
_PORT = re.compile(r"[0-9]{0,5}", re.ASCII)

#: pragmas an application's connection may not run: they name other files or let a
#: statement rewrite the schema behind SQLite's back (https://sqlite.org/pragma.html).
_DENIED_PRAGMAS = frozenset({"writable_schema", "temp_store_directory",
                             "data_store_directory", "schema_version"})
#: authorizer actions that change a database (https://sqlite.org/c3ref/c_alter_table.html)
_WRITES = frozenset({
    sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TRIGGER,
    sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_DROP_INDEX,
    sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_ALTER_TABLE,
    sqlite3.SQLITE_REINDEX, sqlite3.SQLITE_ANALYZE, sqlite3.SQLITE_CREATE_VTABLE,
    sqlite3.SQLITE_DROP_VTABLE})
_ATTACH, _DETACH = sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH
_PRAGMA, _FUNCTION = sqlite3.SQLITE_PRAGMA, sqlite3.SQLITE_FUNCTION
_OK, _DENY = sqlite3.SQLITE_OK, sqlite3.SQLITE_DENY


def isolate(action: int, arg1: str | None, arg2: str | None, db: str | None,
            _trigger: str | None) -> int:
    """The authorizer of every connection the router hands out (``sqlite3_set_authorizer``,
    https://sqlite.org/c3ref/set_authorizer.html): ``SQLITE_DENY`` for ``ATTACH``,
    ``DETACH`` (``VACUUM INTO`` attaches its target, so it is denied too), any write to
    the attached registry ``central``, ``load_extension()``, the pragmas in
    ``_DENIED_PRAGMAS`` and the ``journal_mode`` / ``wal_checkpoint`` uses ``_pragma``
    refuses; ``SQLITE_OK`` for everything else. A denied statement fails to
    prepare with ``sqlite3.DatabaseError: not authorized``.

    Called for each statement an application prepares, several times per statement, so it
    tests the common case (a read or write of ``main``) with the fewest comparisons."""
    if db == "central" and action in _WRITES:
        return _DENY
    if action in (_ATTACH, _DETACH):
        return _DENY
    if action == _PRAGMA:
        return _pragma(arg1.lower() if arg1 is not None else "", arg2, db)
    if action == _FUNCTION and arg2 is not None and arg2.lower() == "load_extension":
        return _DENY
    return _OK


def _pragma(name: str, value: str | None, db: str | None) -> int:
    """A ``PRAGMA [db.]name[=value]`` on a router connection: ``SQLITE_DENY`` for
    ``_DENIED_PRAGMAS``; for ``journal_mode`` set to anything but ``wal`` (reading it,
    and the no-op ``=WAL`` many applications run at connect, stay allowed: tenant files
    stay in the WAL mode the reconciler and Litestream rely on; unqualified, the change
    would also reach the read-only registry and fail as "disk I/O error"); and for
    ``wal_checkpoint`` not limited to ``main`` (unqualified it also checkpoints the
    read-only registry, which SQLite refuses with "disk I/O error":
    ``PRAGMA main.wal_checkpoint(TRUNCATE)`` is the allowed form)."""
    if name in _DENIED_PRAGMAS:
        return _DENY
    if name == "journal_mode":
        return _OK if value is None or value.lower() == "wal" else _DENY
    if name == "wal_checkpoint":
        return _OK if db == "main" else _DENY
    return _OK


_LOOKUP = ("SELECT t.name, t.path, t.region, t.schema_version, t.status "
           "FROM domains AS d JOIN tenants AS t ON t.name = d.tenant WHERE d.domain = ?")


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Tenant:
    """What a host resolves to, as the registry recorded it."""

    name: str
    path: Path  # absolute; exactly ``tenants.path``
    region: str
    schema_version: int
    status: str

    def unavailable_reason(self) -> str | None:
        """None when the status lets a connection be handed out, else why not. The
        schema is not judged here: ``min_schema`` is checked against the file's own
        ``user_version`` (``Router.connect``), never the registry's copy."""
        if self.status not in SERVABLE:
            return REASONS.get(self.status, f"{self.status}: not servable")
        return None


def _too_old(version: int, min_schema: int) -> str:
    return (f"schema too old: the tenant is at v{version}, this application needs "
            f"v{min_schema}; wait for the reconciler to migrate it")


# --------------------------------------------------------------------------- errors


class RoutingError(ReconcileError):
    """Base of routing errors; ``http_status`` is what an application should answer."""

    http_status = 500


class InvalidHost(RoutingError, InvalidInput):
    """The host is not a hostname (400). Raised before any lookup."""

    http_status = 400

    def __init__(self, host: str, why: str) -> None:
        self.host = host
        InvalidInput.__init__(self, [Problem(
            "host", None, None, f"{host[:80]!r} is not a valid hostname: {why}",
            "send a Host header such as aaron.yoursaas.com")])


class TenantNotFound(RoutingError):
    """No tenant is routed at this host (404)."""

    http_status = 404

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(f"no tenant is routed at {host}")


class TenantUnavailable(RoutingError):
    """The tenant exists but must not be used right now (503); ``reason`` says why."""

    http_status = 503

    def __init__(self, tenant: Tenant, reason: str) -> None:
        self.tenant = tenant
        self.reason = reason
        super().__init__(f"tenant {tenant.name} is unavailable — {reason}")


class RegistryUnavailable(RoutingError):
    """The central registry cannot be read (503)."""

    http_status = 503


class TenantElsewhere(RoutingError):
    """The tenant lives in another region (issue 15): answer 307 to ``endpoint`` (the
    ``regions.<name>.endpoint`` declared for it; None when none was) or proxy there.
    ``tenant`` is the row as that region's registry holds it, ``region`` that region,
    ``age`` how many seconds old this host's view of that registry is, ``generation``
    the tenant's generation in that registry (None when not known)."""

    http_status = 307

    def __init__(self, tenant: Tenant, region: str, endpoint: str | None, age: float | None,
                 generation: int | None = None) -> None:
        self.tenant = tenant
        self.region = region
        self.endpoint = endpoint
        self.age = age
        self.generation = generation
        where = f" at {endpoint}" if endpoint else " (no endpoint declared for it)"
        seen = f"; this host's view of its registry is {age:.0f} s old" \
            if age is not None else ""
        super().__init__(f"tenant {tenant.name} lives in region {region}{where}{seen}")


class CannotTell(TenantUnavailable):
    """Nothing routes this host here, and another region's registry view is missing or
    stale, so it may live there (503; issue 15): ``views`` is region → age in seconds
    (None: no usable copy). Never answered as "not found"."""

    def __init__(self, host: str, views: Mapping[str, float | None], stale_after: float
                 ) -> None:
        self.host = host
        self.views = dict(views)
        said = "; ".join(
            f"region {r}'s registry view is missing" if age is None else
            f"region {r}'s registry view is {age:.0f} s old (stale after {stale_after:g} s)"
            for r, age in sorted(self.views.items()))
        super().__init__(Tenant(host, Path(), "", 0, "unknown"),
                         f"cannot tell where {host} lives: {said}; retry shortly")


# --------------------------------------------------------------------------- regions

#: a registry view older than this (seconds) is stale (``settings.stale_after``)
DEFAULT_STALE_AFTER = 30.0


@dataclass(frozen=True)
class Peer:
    """Another region as this host's registry lists it (``regions`` table): its name,
    endpoint and the followed copy of its registry."""

    name: str
    endpoint: str | None
    registry: Path


def across(host: str, local: tuple[Tenant, int] | None, seen: list[peers.Sighting],
           stale_after: float) -> Tenant | None:
    """Where ``host`` lives, from this host's registry (``local``: the tenant and its
    generation, or None) and what each other region's copy says (``seen``). Pure.

    Highest generation wins, never the first found; a tie keeps the local row. Returns
    the local tenant (serve it, or not, by its status), None (held nowhere and every
    view fresh: not found), or raises ``TenantElsewhere`` (a peer holds it at a higher
    generation, or holds it and this host does not), ``TenantUnavailable`` (the winner
    is not servable where it is) or ``CannotTell`` (held nowhere that can be seen, but
    a view is missing or stale)."""
    best = max((s for s in seen if s.tenant is not None),
               key=lambda s: (s.tenant.generation if s.tenant else 0,
                              s.tenant is not None and s.tenant.status in SERVABLE,
                              -(s.age if s.age is not None else float("inf"))),
               default=None)
    if best is None or best.tenant is None:
        if local is not None:
            return local[0]
        blind = {s.region: s.age for s in seen if s.age is None or s.age > stale_after}
        if blind:
            raise CannotTell(host, blind, stale_after)
        return None
    if local is not None and local[1] >= best.tenant.generation:
        return local[0]
    t = best.tenant
    tenant = Tenant(t.name, Path(t.path), t.region, t.schema_version, t.status)
    if t.status not in SERVABLE:
        raise TenantUnavailable(tenant, f"in region {best.region}: "
                                + (tenant.unavailable_reason() or t.status))
    raise TenantElsewhere(tenant, best.region, best.endpoint, best.age, t.generation)


# --------------------------------------------------------------------------- hosts


def normalize_host(host: str) -> str:
    """The canonical form of a ``Host`` header value, or ``InvalidHost``.

    ASCII only; one ``:port`` (digits) and one trailing dot are stripped; the rest is
    lowercased and must be an RFC 1123 hostname of at most 253 characters.
    """
    if not isinstance(host, str) or not host:
        raise InvalidHost(str(host), "it is empty")
    if len(host) > 300 or not host.isascii():
        raise InvalidHost(host, "it is too long" if len(host) > 300
                          else "it contains non-ASCII characters (use the punycode form)")
    name, colon, port = host.partition(":")
    if colon and not _PORT.fullmatch(port):
        raise InvalidHost(host, "the port is not a number")
    if name.endswith("."):
        name = name[:-1]
    name = name.lower()
    if not _HOSTNAME.fullmatch(name):
        raise InvalidHost(host, "use letters, digits, hyphens and dots only, labels of at "
                                "most 63 characters, 253 in all")
    return name


# --------------------------------------------------------------------------- connections


class TenantConnection(sqlite3.Connection):
    """A ``sqlite3.Connection`` to one tenant's file, with ``central`` attached.

    Every commit is *confirmed*: holding the tenant file's write lock, the connection
    checks with the registry that its host still routes to this very file and that the
    tenant is servable; if not (it was relocated, archived, suspended meanwhile) the
    transaction is rolled back and ``TenantUnavailable`` raised, so a write can never
    land in a file the reconciler has retired. Commit with ``commit()`` or the context
    manager (not ``executescript`` or a literal ``COMMIT``, which skip the check);
    ``begin_write()`` starts a write transaction and confirms up front.

    As a context manager it commits on success, rolls back on an exception, and then
    closes (a plain ``sqlite3.Connection`` would stay open): requests must not keep
    tenant files open.
    """

    tenant: Tenant
    _router: Router
    _host: str

    def begin_write(self) -> None:
        """``BEGIN IMMEDIATE`` (take the write lock now), then confirm the route."""
        self.execute("BEGIN IMMEDIATE")
        self._confirm()

    def commit(self) -> None:
        if self.in_transaction:
            self._confirm()
        super().commit()

    def _confirm(self) -> None:
        # The route is read after the write lock is held (the transaction wrote, or
        # began IMMEDIATE). A relocation takes that same lock before copying and keeps
        # it until the registry points elsewhere: either it is still waiting for us
        # (the file is live) or the switch is already visible here.
        reason = self._router._still_routed(self._host, self.tenant)
        if reason is not None:
            self.rollback()
            raise TenantUnavailable(self.tenant, reason)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        try:
            if exc_type is None:
                self.commit()
            else:
                self.rollback()
        finally:
            self.close()
        return False


@dataclass(frozen=True)
class _Entry:
    tenant: Tenant
    uri: str  # the tenant file as a mode=rw URI, built once per cache fill ("" if unusable)
    key: str  # the normalised host it was looked up by


class Router:
    """Routes hosts to tenant databases through the registry at ``central_path``.

    One instance per process is enough (it is thread-safe); it holds one read-only
    connection to the registry. ``busy_timeout`` (seconds) applies to the connections
    it hands out.
    """

    def __init__(self, central_path: str | Path, *,
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                 stale_after: float = DEFAULT_STALE_AFTER) -> None:
        self.central_path = Path(central_path).resolve()
        self.busy_timeout = busy_timeout
        self.stale_after = stale_after  # issue 15: settings.stale_after of the fleet
        self._peers: tuple[Peer, ...] | None = None  # read again when the registry changes
        self._central_uri = f"{self.central_path.as_uri()}?mode=ro"
        self._lock = threading.Lock()
        self._cache: dict[str, _Entry | None] = {}
        try:
            self._registry = sqlite3.connect(self._central_uri, uri=True, isolation_level=None,
                                             check_same_thread=False, timeout=busy_timeout)
            self._seen = self._registry.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise RegistryUnavailable(
                f"cannot open the registry {self.central_path} read-only ({exc}); run "
                "`reconcile` once to create it, or pass the path of an existing central.db"
            ) from exc

    # ------------------------------------------------------------------ public API
    def resolve(self, host: str) -> Tenant:
        """The tenant routed at ``host``, whatever its status.

        Raises ``InvalidHost`` (400) or ``TenantNotFound`` (404). Use
        ``Tenant.unavailable_reason()`` to learn whether it may be served. On a
        multi-host fleet (issue 15) also ``TenantElsewhere`` (307: another region holds
        it, at a higher generation than here if here too), ``CannotTell`` (503: held
        nowhere this host can see while a region's view is missing or stale) or
        ``TenantUnavailable`` (503: the region holding it does not serve it now).
        """
        return self._entry(host)[0].tenant

    def connect(self, host: str, min_schema: int | None = None) -> TenantConnection:
        """A connection to the file of the tenant routed at ``host``.

        The registry is attached read-only as ``central``; ``foreign_keys`` is on and
        the busy timeout set. Raises ``InvalidHost`` (400), ``TenantNotFound`` (404),
        ``TenantUnavailable`` (503: unservable status, a file that cannot be opened, or
        a schema below ``min_schema``, checked against the file's own
        ``user_version``) or ``RegistryUnavailable`` (503); across regions also
        ``TenantElsewhere`` (307) and ``CannotTell`` (503), as ``resolve``.
        """
        for _ in range(3):
            entry, seen, key = self._entry(host)
            reason = entry.tenant.unavailable_reason()  # schema: the file says, below
            if reason is None and not entry.uri:
                reason = f"the registry holds a relative path ({entry.tenant.path})"
            if reason is not None:
                raise TenantUnavailable(entry.tenant, reason)
            try:
                conn, version = self._open(entry, min_schema is not None)
            except TenantUnavailable:
                if self._still(host, key, entry, seen):
                    raise
                continue  # the file moved because its route changed: follow the route
            if self._still(host, key, entry, seen):
                if min_schema is not None and version is not None and version < min_schema:
                    conn.close()
                    raise TenantUnavailable(entry.tenant, _too_old(version, min_schema))
                return conn
            conn.close()  # the route changed while opening: look again
        raise RegistryUnavailable(f"the route of {host!r} kept changing while opening a "
                                  "connection; retry the request")

    def close(self) -> None:
        """Close the held registry connection (connections handed out are unaffected)."""
        with self._lock:
            self._cache.clear()
            self._registry.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _entry(self, host: str) -> tuple[_Entry, int, str]:
        """The entry for ``host``, the registry version it is valid at, and the
        normalised host. The raw header value is cached too, so a repeat request costs
        one dictionary lookup and no validation."""
        with self._lock:
            seen = self._fresh()
            if host in self._cache:
                entry = self._cache[host]
                key = entry.key if entry is not None else normalize_host(host)
            else:
                key = normalize_host(host)
                entry = self._cached_lookup(host, key)
            regions = self._regions() if entry is None or \
                entry.tenant.status not in SERVABLE else ()
        if regions:  # not served here: another region may hold it (issue 15)
            self._across(key, entry, regions)
        if entry is None:
            raise TenantNotFound(key)
        return entry, seen, key

    def _regions(self) -> tuple[Peer, ...]:
        """The other regions this host follows (lock held; read once per registry
        change; () on a single host or a registry older than issue 15)."""
        if self._peers is None:
            try:
                rows = self._registry.execute(
                    "SELECT name, endpoint, registry FROM regions WHERE local = 0 AND "
                    "registry IS NOT NULL ORDER BY name").fetchall()
            except sqlite3.Error:
                rows = []
            self._peers = tuple(Peer(n, e, Path(r)) for n, e, r in rows)
        return self._peers

    def _across(self, key: str, entry: _Entry | None, regions: tuple[Peer, ...]) -> None:
        """Raise where ``key`` lives if not here (see ``across``); return when the local
        entry stands (or nothing holds it and every view is fresh)."""
        local = None
        if entry is not None:
            with self._lock:
                row = self._registry.execute("SELECT generation FROM tenants WHERE name = ?",
                                             (entry.tenant.name,)).fetchone()
            local = (entry.tenant, int(row[0]) if row is not None else 1)
        from reconciler import peers  # (state's imports cost a single host ~0.1 s)

        now = time.time()
        seen = [peers.find(p.registry, p.name, p.endpoint, key, now,
                           min(self.busy_timeout, peers.DEFAULT_BUSY_TIMEOUT))
                for p in regions]
        across(key, local, seen, self.stale_after)

    def _cached_lookup(self, host: str, key: str) -> _Entry | None:
        """Look ``key`` up through the cache and remember it under ``host`` too (lock held)."""
        entry = self._cache[key] if key in self._cache else self._lookup(key)
        if len(self._cache) >= MAX_CACHED_HOSTS:
            self._cache.clear()
        self._cache[host] = self._cache[key] = entry
        return entry

    def _fresh(self) -> int:
        """Drop the cache if the registry changed since last seen (lock held)."""
        try:
            version: int = self._registry.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise RegistryUnavailable(f"cannot read the registry {self.central_path}: {exc}"
                                      ) from exc
        if version != self._seen:
            self._cache.clear()
            self._peers = None
            self._seen = version
        return version

    def _still(self, host: str, key: str, entry: _Entry, seen: int) -> bool:
        """Whether ``host`` still routes to ``entry`` (re-read only if the registry
        changed since ``seen``: the reconciler commits events all the time, and those
        must not turn requests away)."""
        with self._lock:
            if self._fresh() == seen:
                return True
            return self._cached_lookup(host, key) == entry

    def _still_routed(self, host: str, tenant: Tenant) -> str | None:
        """None if ``host`` still routes to ``tenant``'s file and it is servable, else
        why not. Costs one ``PRAGMA data_version`` while the registry is unchanged."""
        try:
            now = self._entry(host)[0].tenant
        except TenantNotFound:
            return "the host no longer routes to this tenant; retry the request"
        except TenantElsewhere as exc:
            return (f"the tenant moved to region {exc.region} while this request was "
                    "running; nothing was written, retry the request there")
        except TenantUnavailable as exc:
            return exc.reason
        if (now.name, now.path) != (tenant.name, tenant.path):
            return ("the tenant was relocated while this request was running; nothing was "
                    "written, retry the request")
        return now.unavailable_reason()

    def _lookup(self, key: str) -> _Entry | None:
        """Read one host's route from the registry (lock held)."""
        try:
            row = self._registry.execute(_LOOKUP, (key,)).fetchone()
        except sqlite3.Error as exc:
            raise RegistryUnavailable(
                f"cannot read routes from the registry {self.central_path} ({exc}); has "
                "`reconcile` run against it?") from exc
        if row is None:
            return None
        name, path, region, schema_version, status = row
        tenant = Tenant(name, Path(path), region, int(schema_version), status)
        # the registry only ever holds absolute paths; a relative one is not ours to
        # interpret against whatever directory the application happens to run in
        uri = f"{tenant.path.as_uri()}?mode=rw" if tenant.path.is_absolute() else ""
        return _Entry(tenant, uri, key)

    def _open(self, entry: _Entry, read_version: bool
              ) -> tuple[TenantConnection, int | None]:
        """Open the tenant file (never creating it) and attach central read-only.

        Returns the connection and, if asked, the file's own ``user_version`` (the
        truth for ``min_schema``: the registry's copy may lag a migration that just
        finished). Not read otherwise: it is a file read on every request.
        """
        tenant = entry.tenant
        try:
            conn = sqlite3.connect(entry.uri, uri=True, timeout=self.busy_timeout,
                                   factory=TenantConnection)
        except sqlite3.Error as exc:
            raise TenantUnavailable(tenant, f"its database file cannot be opened ({exc}); "
                                            "the reconciler will report it missing") from exc
        try:
            conn.tenant, conn._router, conn._host = tenant, self, entry.key
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("ATTACH DATABASE ? AS central", (self._central_uri,))
            conn.set_authorizer(isolate)
            version: int | None = None
            if read_version:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            conn.close()
            raise TenantUnavailable(tenant, f"its database cannot be read ({exc})") from exc
        return conn, version
