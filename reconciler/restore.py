"""``reconcile restore TENANT --from FILE``: put an operator's copy in service for a
tenant whose file is gone (DESIGN §8, issue 3).

Why: reconciliation never recreates a ``missing`` tenant empty — a human decides which
copy is the right one (a retired or archived copy, or a backup). This verifies that
copy and places it, so the decision is the only manual step.

Invariants:
* the operator's file is read, never moved or written, not even opened by SQLite: a
  byte copy (with its ``-wal``/``-journal``) is checked and goes into service;
* nothing is changed unless the copy passes ``integrity_check`` and has a
  ``user_version`` the migrations know (0 ≤ v ≤ latest);
* it never replaces a file in service: only a tenant whose registered file is gone
  (or a declared tenant that was never registered) is restored;
* it runs under the fleet lock, like any other writer of the registry.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from reconciler import fleet, relocate, tenantdb
from reconciler.context import OK, Context, Logger, Outcome, Timer, record
from reconciler.engine import Inputs, locked_registry
from reconciler.errors import PermanentError
from reconciler.registry import Registry
from reconciler.versions import unknown_version, unknown_version_hint


@dataclass(frozen=True)
class Restored:
    tenant: str
    source: Path
    path: Path
    region: str
    version: int
    latest: int


def stage_copy(source: Path, temp: Path, latest: int, busy_timeout: float) -> int:
    """Copy ``source`` (and a ``-wal``/``-journal`` beside it) byte for byte to ``temp``,
    then check the copy: SQLite recovers it as it would the original, it passes
    ``integrity_check``, and its ``user_version`` is one the migrations know.

    Returns that version; raises ``PermanentError`` saying what is wrong (and leaves no
    temp behind). The operator's files are only read: not even a ``-shm`` appears."""
    try:
        st = os.stat(source)
    except OSError as exc:
        raise PermanentError(f"cannot read {source}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise PermanentError(f"{source} is not a regular file")
    tenantdb.remove_quietly(temp)
    try:
        for suffix in ("", "-wal", "-journal"):
            if suffix and not os.path.exists(f"{source}{suffix}"):
                continue
            with open(f"{source}{suffix}", "rb") as src, \
                    open(f"{temp}{suffix}", "xb") as dst:
                os.fchmod(dst.fileno(), tenantdb.FILE_MODE)
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
        try:
            conn = tenantdb.connect(temp, busy_timeout)
            try:
                bad = tenantdb.check(conn, "integrity_check")
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if bad is None:
                    conn.execute("PRAGMA journal_mode=WAL")  # folds in any -wal: one file
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise PermanentError(f"{source} is not a usable SQLite database: {exc}") from exc
        if bad is not None:
            raise PermanentError(f"{source} failed integrity_check: {bad} — not restored")
        if not 0 <= version <= latest:
            raise PermanentError(f"{source} {unknown_version(version, latest)} — not "
                                 f"restored; {unknown_version_hint(version, latest)}")
        tenantdb.fsync_file(temp)
    except BaseException:
        tenantdb.remove_quietly(temp)
        raise
    return version


def restore_file(inputs: Inputs, tenant: str, source: Path, log: Logger, *,
                 wait: bool = True) -> Restored:
    with locked_registry(inputs, log, wait) as registry:
        return _restore(inputs, registry, tenant, source.absolute(), log)


def _restore(inputs: Inputs, registry: Registry, tenant: str, source: Path, log: Logger
             ) -> Restored:
    desired, timeout = inputs.desired, inputs.desired.settings.busy_timeout
    row, spec = registry.tenant(tenant), desired.tenants.get(tenant)
    journal = registry.journal_row(tenant)
    if journal is not None:
        raise PermanentError(f"{tenant} has an unfinished {journal.action} (phase "
                             f"{journal.phase}); run `reconcile` to finish it first")
    if row is None:
        if spec is None:
            raise PermanentError(f"{tenant} is neither registered nor declared in "
                                 f"{desired.source.name}; declare it first")
        dest, region, protected = desired.tenant_path(tenant, spec.region), spec.region, \
            spec.protected
    else:
        if row.status == "archived":
            raise PermanentError(f"{tenant} is archived at {row.path}; declare it in "
                                 f"{desired.source.name} and run `reconcile` to restore it")
        dest, region, protected = Path(row.path), row.region, row.protected
        if not fleet.fence(desired).holds(dest):
            # registered outside this fleet's directories (a copied or moved registry):
            # never recreate that tree — the copy goes where this fleet keeps the tenant
            home = fleet.home(desired, row)
            if home is None:
                raise PermanentError(f"{tenant} is registered at {dest} in region {region}, "
                                     f"which {desired.source.name} no longer declares; "
                                     "declare the region again first")
            dest = Path(home)
    fleet.check(desired, dest, f"restoring {tenant} to")
    wanted = desired.tenant_path(tenant, spec.region) if spec is not None else None
    if row is not None and os.path.lexists(dest) and str(dest) != row.path:
        raise PermanentError(f"{tenant}'s database is already at {dest}, where this fleet "
                             f"keeps it (the registry still names {row.path}): run "
                             "`reconcile` — it points the registry at that file (reroot), "
                             "no copy needed")
    if row is not None and wanted is not None and str(wanted) != row.path and \
            os.path.lexists(wanted) and source.absolute() == wanted.absolute():
        raise PermanentError(f"{source} is already where {desired.source.name} wants "
                             f"{tenant}: run `reconcile` — it registers that file (reroot), "
                             "no copy needed")
    if os.path.lexists(dest):
        raise PermanentError(f"{tenant}'s file {dest} exists (status "
                             f"{row.status if row else 'unregistered'}); restore only fills "
                             "the place of a missing file — move it away first if you mean "
                             "to replace it")
    if source == dest:
        raise PermanentError(f"{source} is the tenant's own path")
    timer = Timer()
    tenantdb.ensure_dir(dest.parent)
    temp = dest.with_name(f".{dest.name}.restoring")
    version = stage_copy(source, temp, inputs.catalog.latest, timeout)
    try:
        relocate.link_into_place(temp, dest)
    except BaseException:
        tenantdb.remove_quietly(temp)
        raise
    ctx = Context(desired, inputs.catalog, registry, inputs.revision, log)
    outcome = Outcome(tenant, "restore", OK, version, version, timer.ms,
                      detail={"from": str(source), "path": str(dest), "region": region,
                              "manual": True})
    with registry.durable_transaction():
        if row is None:
            registry.upsert_tenant(tenant, region, dest, version, "active", protected)
        else:
            registry.update_tenant(tenant, schema_version=version, status="active", path=dest,
                                   failure=None, failed_key=None, failures=0, retry_at=None)
        record(ctx, "restore", tenant, outcome, level="warning")
    return Restored(tenant, source, dest, region, version, inputs.catalog.latest)
