"""One agent per region: refuse to become a region's agent when another one writes it.

Why: each region's registry is replicated to ``<replica>/_registry/<region>`` and
followed by every other host. A second ``reconcile daemon --region eu`` (a clone of the
repository started on another host, or a lost host rebuilt by hand without its
registry) has a registry of its own: it would create empty copies of eu's tenants
(nothing in its registry says they exist; eu is not a peer it follows) and replicate its
registry over eu's. A fresh user did exactly that and got an empty generation-1 copy of
a tenant served beside the real one.

Rule (checked before the agent writes or replicates anything, ``claim``): restore the
region's registry replica; if there is none, nobody claimed the region yet. If there is
one, it must be this registry's: the same fleet id (``fleet.id``, a random id each
registry records at its first pass and keeps when it is moved or restored). Otherwise
the agent is refused (``InvalidInput``, exit 1, nothing written) with what to do: stop
the other agent, or to rebuild a lost host, restore the registry from the replica first.
A replica store that cannot be read does not block a restart of the registry's own
agent (its registry is here: it has written the replica itself) but blocks a new one.

Invariants: reads only (a restore into a temporary directory, removed afterwards);
costs one ``litestream restore`` of the registry per agent start.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from reconciler import fleet, litestream, readonly
from reconciler.backup import registry_url
from reconciler.desired import Desired
from reconciler.errors import InvalidInput, Problem, ReconcileError
from reconciler.registry import Registry

OPTION = "--region"
#: what ``litestream restore`` says when a replica has nothing yet (0.5.17)
_NOTHING = ("no matching backup files", "no snapshots available", "no generations",
            "bucket not found", "not found")


def _fleet_id(path: Path) -> str | None:
    """The fleet id the registry at ``path`` recorded (None: none yet, or unreadable),
    whatever the registry's version (a replica written by a newer reconciler counts)."""
    try:
        return readonly.read(path.absolute(), lambda conn: fleet.stored(
            Registry(path, conn, readonly=True)).get("id"))
    except (ReconcileError, OSError, sqlite3.Error):
        return None


def claim(desired: Desired, region: str) -> None:
    """Refuse (``InvalidInput``) to act as ``region``'s agent when the region's registry
    replica belongs to another registry (see the module doc). Raises nothing when
    backups are off (``agent.check`` refuses that) or the replica cannot be read and
    this host's registry has a fleet id."""
    backup = desired.settings.backup
    if backup is None:
        return
    url = registry_url(backup.replica, region)
    here = _fleet_id(desired.settings.central)
    with tempfile.TemporaryDirectory(prefix=".claim-") as tmp:
        copy = Path(tmp) / "registry.db"
        try:
            litestream.restore(url, copy, None, timeout=120.0)
        except ReconcileError as exc:
            text = str(exc).lower()
            if any(n in text for n in _NOTHING):
                return  # nobody has claimed the region yet
            if here is not None:
                return  # our own registry: the replica store is just unreachable now
            raise InvalidInput([Problem(
                OPTION, None, None,
                f"cannot tell whether another agent already serves region {region}: its "
                f"registry replica {url} cannot be read ({exc})",
                "start the agent once the replica store answers")]) from exc
        there = _fleet_id(copy)
    if there is None or there == here:
        return
    raise InvalidInput([Problem(
        OPTION, None, None,
        f"region {region} already has an agent: its registry replica {url} belongs to "
        + ("another registry than this host's" if here is not None else
           f"a registry this host does not have ({desired.settings.central} "
           + ("is new" if not desired.settings.central.exists() else "has no fleet id")
           + ")"),
        "one agent per region: stop the other agent and run this one; or, to rebuild a "
        "lost host by hand (not automated): restore its registry (`umask 077; litestream "
        f"restore -o {desired.settings.central} {url}`), start the agent (its tenants "
        "show `missing`: their files are in the replica store), then put each back "
        "(`reconcile restore NAME --at TIME --to FILE`, then `reconcile restore NAME "
        "--from FILE`; README: rebuilding a lost region host)")])
