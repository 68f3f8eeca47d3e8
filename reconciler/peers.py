"""Other regions' registries, as this host follows them (issue 15, DESIGN §10).

Why a module of its own: on a multi-host fleet every region's agent writes its own
registry and Litestream replicates it; every other host keeps a read-only copy, restored
and followed by Litestream (``<data_dir>/_follow/<region>.db``, see ``follow``). The
planner (is this tenant held elsewhere, handed to us?), ``status`` and the router (where
does this host live?) all need to read those copies the same way, and to say how old
what they read is.

Invariants:
* a copy is only ever opened ``mode=ro`` (never ``immutable``: Litestream applies pages
  to it under SQLite's own locks while we read), with a busy timeout, and every read of
  one copy is one read transaction, so a view is one consistent state of that registry;
* a view's ``age`` is ``now`` minus the heartbeat its agent last wrote in the copy
  (``agent.heartbeat_at``, refreshed about every second while that agent runs): it grows
  when the agent stops, when replication stops, and when following stops, so one number
  says how far behind this host may be;
* a missing, half-restored or unreadable copy never raises: its view has ``age`` None
  and a ``problem`` saying why, and nothing can be claimed about that region;
* nothing here writes a byte.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from reconciler.state import AgentRow, Handoff, PeerTenant, PeerView

if TYPE_CHECKING:  # (routing imports this module: applications need no YAML parser)
    from reconciler.desired import Desired, Settings

#: the registry version (``registry.UPGRADES``) a peer's copy must have: 8 added
#: ``generation`` and ``agent``, 9 the ``seq`` that confirms a row (``PeerView.confirmed``)
PEER_SCHEMA = 9
DEFAULT_BUSY_TIMEOUT = 2.0
T = TypeVar("T")


def copy_path(settings: Settings, region: str) -> Path:
    """Where this host keeps its followed copy of ``region``'s registry."""
    return settings.follow_dir / f"{region}.db"


def connect(path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> sqlite3.Connection:
    """A read-only connection to a followed copy (``mode=ro``, busy timeout in seconds).
    Raises ``sqlite3.Error`` when it cannot be opened (a missing file included: ``mode=ro``
    never creates one)."""
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True,
                           isolation_level=None, timeout=busy_timeout,
                           check_same_thread=False)


def heartbeat(conn: sqlite3.Connection) -> tuple[float | None, str | None, str | None]:
    """``(heartbeat_at, host, revision)`` of the copy's agent row (None, None, None if it
    has none). Raises ``sqlite3.Error`` (an older registry has no ``agent`` table)."""
    row = conn.execute("SELECT heartbeat_at, host, revision FROM agent WHERE id = 1"
                       ).fetchone()
    if row is None:
        return None, None, None
    return (None if row[0] is None else float(row[0])), row[1], row[2]


def age_of(heartbeat_at: float | None, now: float) -> float | None:
    """Seconds since ``heartbeat_at`` (never negative: hosts' clocks differ a little)."""
    return None if heartbeat_at is None else max(0.0, now - heartbeat_at)


def _in_copy(path: Path, busy_timeout: float, read: Callable[[sqlite3.Connection], T]
             ) -> tuple[T | None, str | None]:
    """``(read(conn), None)`` in one read transaction on the copy at ``path``, or
    ``(None, why not)`` when it is missing or cannot be read."""
    try:
        conn = connect(path, busy_timeout)
    except sqlite3.Error as exc:
        return None, f"no copy of its registry yet ({path}: {exc})"
    try:
        conn.execute("BEGIN")  # one consistent state across the tables
        out = read(conn)
        conn.execute("COMMIT")
        return out, None
    except sqlite3.Error as exc:
        return None, f"cannot read {path}: {exc}"
    finally:
        conn.close()


def _whole(conn: sqlite3.Connection) -> tuple[Any, ...]:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < PEER_SCHEMA:
        raise sqlite3.DatabaseError(f"its registry is at version {version}: upgrade that "
                                    "region's agent" if version else "no registry in it yet")
    beat, host, revision = heartbeat(conn)
    found = conn.execute("SELECT seq FROM agent WHERE id = 1").fetchone()
    seq = int(found[0]) if found is not None else 0
    tenants = {r[0]: PeerTenant(r[0], r[1], r[2], int(r[3]), r[4], int(r[5]), int(r[6]),
                                r[7])
               for r in conn.execute("SELECT name, region, path, schema_version, status, "
                                     "generation, seq, taken_digest FROM tenants")}
    domains = dict(conn.execute("SELECT domain, tenant FROM domains").fetchall())
    handoffs = {r[0]: Handoff(r[0], r[1], r[2], int(r[3]), int(r[4]), r[5], int(r[6]),
                              int(r[7]))
                for r in conn.execute("SELECT tenant, to_region, replica_url, txid, "
                                      "schema_version, digest, generation, seq FROM "
                                      "handoffs")}
    return beat, host, revision, tenants, domains, handoffs, seq


def read_view(path: Path, region: str, endpoint: str | None, now: float,
              busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> PeerView:
    """The view of ``region`` from its followed copy at ``path`` (``now``: unix seconds).
    Never raises for a missing or unreadable copy: the view then has ``age`` None."""
    if not path.exists():
        return PeerView(region, endpoint, None,
                        problem=f"no copy of its registry yet ({path})")
    found, problem = _in_copy(path, busy_timeout, _whole)
    if found is None:
        return PeerView(region, endpoint, None, problem=problem)
    beat, host, revision, tenants, domains, handoffs, seq = found
    age = age_of(beat, now)
    return PeerView(region, endpoint, age, revision, MappingProxyType(tenants),
                    MappingProxyType(domains), MappingProxyType(handoffs), host,
                    None if age is not None else "its agent never recorded a heartbeat",
                    seq)


def read_views(desired: Desired, own_region: str, now: float) -> Mapping[str, PeerView]:
    """Region → view, for every region ``desired`` declares except ``own_region``, read
    from ``<data_dir>/_follow/<region>.db`` (``now``: unix seconds). Never raises for a
    missing or unreadable copy (``age`` None)."""
    s = desired.settings
    busy = min(s.busy_timeout, DEFAULT_BUSY_TIMEOUT) or DEFAULT_BUSY_TIMEOUT
    return MappingProxyType({
        name: read_view(copy_path(s, name), name, region.endpoint, now, busy)
        for name, region in sorted(desired.regions.items()) if name != own_region})


@dataclass(frozen=True)
class Sighting:
    """What one region's followed copy says about one domain (``find``): the view's
    ``age`` (None: no usable copy, ``problem`` says why) and the tenant routed at the
    domain there, if any."""

    region: str
    endpoint: str | None
    age: float | None
    tenant: PeerTenant | None = None
    problem: str | None = None


_FIND = ("SELECT t.name, t.region, t.path, t.schema_version, t.status, t.generation "
         "FROM domains AS d JOIN tenants AS t ON t.name = d.tenant WHERE d.domain = ?")


def find(path: Path, region: str, endpoint: str | None, domain: str, now: float,
         busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> Sighting:
    """Look ``domain`` up in ``region``'s followed copy at ``path`` (one read
    transaction: the heartbeat and the route of one state). Never raises."""
    def one(conn: sqlite3.Connection) -> tuple[float | None, Any]:
        return heartbeat(conn)[0], conn.execute(_FIND, (domain,)).fetchone()
    found, problem = _in_copy(path, busy_timeout, one)
    if found is None:
        return Sighting(region, endpoint, None, problem=problem)
    beat, row = found
    age = age_of(beat, now)
    tenant = None if row is None else PeerTenant(row[0], row[1], row[2], int(row[3]),
                                                 row[4], int(row[5]))
    return Sighting(region, endpoint, age, tenant,
                    None if age is not None else "its agent never recorded a heartbeat")


@dataclass(frozen=True)
class RegionStatus:
    """One region as ``status`` shows it on this host: ``here`` (this host's agent
    writes its registry), the agent (``<region>@<host>``), and for the others the age
    of this host's view of their registry (None: no usable copy, ``problem`` says why)
    and how many tenants it holds."""

    name: str
    endpoint: str | None
    here: bool
    agent: str | None
    age: float | None
    stale: bool
    tenants: int | None
    problem: str | None = None


def fleet_regions(desired: Desired, agent: AgentRow | None, now: float
                  ) -> list[RegionStatus]:
    """Every region ``desired`` declares, as seen from this host, whose registry's agent
    row is ``agent`` (None, or a row without a region: one host serves every region)."""
    own = agent.region if agent is not None else None
    stale_after = desired.settings.stale_after
    views = read_views(desired, own, now) if own is not None else {}
    out = []
    for name, region in sorted(desired.regions.items()):
        view = views.get(name)
        if view is None:  # this host's own registry, read directly
            out.append(RegionStatus(name, region.endpoint, True,
                                    agent.name() if agent is not None else None, 0.0,
                                    False, None))
            continue
        agent_name = f"{name}@{view.host}" if view.host else None
        out.append(RegionStatus(name, region.endpoint, False, agent_name, view.age,
                                not view.fresh(stale_after),
                                len(view.tenants) if view.age is not None else None,
                                view.problem))
    return out
