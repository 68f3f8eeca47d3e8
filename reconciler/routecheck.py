"""What ``reconcile route HOST`` reports: the route an application would take, read
without creating or changing any file.

Why: ``route`` is how an operator (or a CI job with read access only) checks where a
host goes. ``routing.Router`` is the applications' library: it keeps a ``mode=ro``
connection to ``central.db`` (which creates ``-wal``/``-shm`` beside a WAL database, or
fails for a user who cannot write the folder) and opens tenant files for writing. This
module answers the same question through ``Registry.read`` (nothing left behind) and
judges the tenant's file by reading its header (``observe.read_user_version``), with
the same rules as ``Router.connect``: the status must be servable, the file must be a
SQLite database, and its own ``user_version`` must reach ``min_schema``.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from reconciler import observe, peers, routing
from reconciler.errors import PermanentError
from reconciler.registry import Registry
from reconciler.state import RegionRow


@dataclass(frozen=True)
class Route:
    host: str  # normalised
    tenant: routing.Tenant
    reason: str | None  # None: an application would get a connection

    @property
    def available(self) -> bool:
        return self.reason is None


def inspect(central: Path, host: str, min_schema: int | None = None,
            busy_timeout: float = routing.DEFAULT_BUSY_TIMEOUT,
            stale_after: float = routing.DEFAULT_STALE_AFTER) -> Route:
    """The route of ``host`` in the registry at ``central``.

    Raises ``routing.InvalidHost`` (not a hostname), ``routing.TenantNotFound``,
    ``PermanentError`` (no registry at ``central``, or it cannot be read) or
    ``PermissionError`` (no read access to ``central``); on a multi-host fleet, like
    ``Router.resolve``, ``routing.TenantElsewhere``, ``routing.CannotTell`` or
    ``routing.TenantUnavailable`` (the region holding it does not serve it)."""
    key = routing.normalize_host(host)
    absent: tuple[bool, tuple[str, Path, str, int, str] | None, int, list[RegionRow]] = (
        False, None, 1, [])
    exists, found, generation, regions = Registry.read(
        central, lambda reg: (True, reg.route(key), _generation(reg, key), reg.regions()),
        absent)
    if not exists:
        raise PermanentError(f"there is no registry at {central}: run `reconcile` once to "
                             "create it, or pass the path of an existing central.db with "
                             "--central")
    others = [r for r in regions if not r.local and r.registry]
    if others and (found is None or found[4] not in routing.SERVABLE):
        now = time.time()
        seen = [peers.find(Path(r.registry or ""), r.name, r.endpoint, key, now)
                for r in others]
        local = (routing.Tenant(*found), generation) if found is not None else None
        held = routing.across(key, local, seen, stale_after)
        found = None if held is None else found
    if found is None:
        raise routing.TenantNotFound(key)
    tenant = routing.Tenant(*found)
    return Route(key, tenant, tenant.unavailable_reason() or _file_reason(tenant, min_schema,
                                                                          busy_timeout))


def _generation(reg: Registry, domain: str) -> int:
    """The generation of the tenant routed at ``domain`` (1 before issue 15)."""
    try:
        row = reg.conn.execute("SELECT t.generation FROM domains AS d JOIN tenants AS t "
                               "ON t.name = d.tenant WHERE d.domain = ?", (domain,)).fetchone()
    except sqlite3.OperationalError:  # an older registry: no generation column
        return 1
    return 1 if row is None else int(row[0])


def _file_reason(tenant: routing.Tenant, min_schema: int | None, busy_timeout: float
                 ) -> str | None:
    if not tenant.path.is_absolute():
        return f"the registry holds a relative path ({tenant.path})"
    state = observe.read_user_version(tenant.path, busy_timeout, mode="ro")
    if not state.exists:
        return (f"its database file {tenant.path} cannot be opened: it is gone; the "
                "reconciler will report it missing")
    if state.error is not None or state.user_version is None:
        return f"its database file {tenant.path} cannot be used: {state.error}"
    if min_schema is not None and state.user_version < min_schema:
        return (f"schema too old: the tenant is at v{state.user_version}, this application "
                f"needs v{min_schema}; wait for the reconciler to migrate it")
    return None
