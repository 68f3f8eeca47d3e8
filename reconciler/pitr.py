"""Restore points and point-in-time restore from Litestream replicas (issue 14).

``reconcile backups TENANT`` lists each of the tenant's lineages (every file it had in
service, see ``replication``) with the time range its replica can restore.
``reconcile restore TENANT --at TIME`` brings the tenant back as it was at TIME.

Protocol of a restore into service (journaled like every file switch, DESIGN §5):
1. *stage* — ``litestream restore -timestamp`` writes ``<data_dir>/_restore/
   <tenant>-<stamp>.db.partial``, which is verified (``integrity_check``, a
   ``user_version`` the catalog knows, every row of every table read) and then renamed
   to ``….db``. Nothing is journaled yet: a run killed here leaves only a staged file,
   which the next restore of that tenant moves to ``_retired/``;
2. *retire* — journaled ``pitr``/``retire`` with status ``relocating`` (applications
   wait): Litestream lets go of the live file (final sync), its local state moves
   aside, and the live file (with ``-wal``/``-shm``) moves to ``_retired/`` — never
   deleted;
3. *copy/link/register* — journaled as the archive restore (``restore``/``copy``): the
   staged file is copied beside the live path, verified equal to it, linked into place
   and registered ``active`` in one power-safe transaction; the staged file is retired.
A run killed at any phase is finished by the next ``reconcile`` (the plan resumes the
journal) or by the next ``reconcile restore``; the live file is never overwritten and no
tenant data is deleted. ``--to FILE`` and ``--dry-run`` stop after a verified stage.

TIME granularity: Litestream stamps what it captured with whole UTC seconds, the
moment it read the commit from the WAL (within ``monitor-interval``, 1 s, of the
commit); a restore "at T" holds exactly the transactions Litestream stamped ≤ T.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from reconciler import archive, litestream, relocate, replication, tenantdb
from reconciler.actions import Action, Kind
from reconciler.backup import LITESTREAM_TABLES
from reconciler.context import Context, Logger, crash_point, record
from reconciler.context import Outcome as Outcome
from reconciler.engine import Inputs, locked_registry
from reconciler.errors import InvalidInput, PermanentError, Problem, RetryableError
from reconciler.registry import JournalRow, Registry


@dataclass(frozen=True)
class RestorePoints:
    """One lineage's replica: where, which file, and the range it restores
    (epoch seconds; None when the replica holds nothing yet or cannot be read)."""

    lineage: str
    url: str
    path: str
    started_at: str
    ended_at: str | None
    earliest: float | None
    latest: float | None
    txid: int
    files: int
    error: str | None = None


def parse_time(text: str) -> datetime:
    """``--at``: ISO 8601 / RFC 3339 (``2026-11-30T10:40:00Z``, ``…+01:00``); without
    an offset the time is UTC. Raises ``InvalidInput``."""
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise InvalidInput([Problem("--at", None, None, f"{text!r} is not a time",
                                    "write for example 2026-11-30T10:40:00Z")]) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def points(inputs: Inputs, tenant: str) -> list[RestorePoints]:
    """Every lineage of ``tenant`` with its restorable range, oldest first."""
    settings = inputs.desired.settings
    with Registry.reading(settings.central) as reg:
        if reg is None or not replication.has_lineages(reg):
            return []
        found = replication.lineages(reg, tenant)
    out: list[RestorePoints] = []
    for lin in found:
        try:
            files = litestream.ltx_files(lin.url)
        except (PermanentError, RetryableError) as exc:
            out.append(RestorePoints(lin.lineage, lin.url, lin.path, lin.started_at,
                                     lin.ended_at, None, None, 0, 0, str(exc)))
            continue
        stamps = [f.created for f in files]
        out.append(RestorePoints(lin.lineage, lin.url, lin.path, lin.started_at, lin.ended_at,
                                 min(stamps) if stamps else None,
                                 max(stamps) if stamps else None,
                                 max((f.max_txid for f in files), default=0), len(files)))
    return out


def choose(found: list[RestorePoints], at: datetime) -> RestorePoints:
    """The newest lineage that existed at ``at`` (its earliest restore point ≤ at)."""
    t = at.timestamp()
    # stamps are whole seconds, truncated: a file stamped S.3 is only "before" S+1
    usable = [p for p in found if p.earliest is not None and p.earliest + 1 <= t]
    if not usable:
        ranges = ", ".join(f"{iso(p.earliest)} … {iso(p.latest)}" for p in found
                           if p.earliest is not None) or "none"
        raise PermanentError(f"no restore point at or before {iso(t)} (available: "
                             f"{ranges}) — see `reconcile backups`")
    return usable[-1]


def iso(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Verified:
    path: Path
    version: int
    tables: dict[str, int]  # rows per table (Litestream's own tables excluded)


def verify(path: Path, latest: int, busy_timeout: float) -> Verified:
    """A restored copy is usable: ``integrity_check`` passes, its ``user_version`` is
    one the catalog knows, and every row of every table can be read."""
    with tenantdb.checked_copy(path, busy_timeout) as conn:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if not 0 <= version <= latest:
            raise PermanentError(f"restored copy is at schema v{version}, the migrations "
                                 f"end at v{latest} — not restored")
        tables: dict[str, int] = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' "
                                    "AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall():
            n = 0
            for _row in conn.execute(f"SELECT * FROM {relocate.quote(name)}"):
                n += 1  # reads every column of every row
            if name not in LITESTREAM_TABLES:
                tables[name] = n
    return Verified(path, version, tables)


def target(point: RestorePoints, at: datetime) -> datetime | None:
    """The ``-timestamp`` to give Litestream: ``at``, or None (its newest state) when
    ``at`` is past the lineage's last capture — Litestream refuses a time beyond it, and
    the state then is the last one replicated."""
    if point.latest is not None and at.timestamp() >= point.latest + 1:
        return None
    return at


def stage(url: str, out: Path, at: datetime | None, latest: int, busy_timeout: float,
          txid: int | None = None) -> Verified:
    """Restore ``url`` as of ``at`` (None: its newest state; or exactly at ``txid``)
    into the new file ``out`` and verify it; on any failure nothing is left at ``out``."""
    partial = out.with_name(out.name + ".partial")
    for p in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        tenantdb.remove_quietly(p)  # a killed stage's, never in service
    try:
        litestream.restore(url, partial, at, txid=txid)
        crash_point("pitr:after-restore")
        verified = verify(partial, latest, busy_timeout)
        conn = tenantdb.connect(partial, busy_timeout)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            conn.close()
        tenantdb.fsync_file(partial)
        os.rename(partial, out)
        tenantdb.fsync_dir(out.parent)
    except BaseException:
        for p in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            tenantdb.remove_quietly(p)
        raise
    return Verified(out, verified.version, verified.tables)


@dataclass(frozen=True)
class PitrResult:
    tenant: str
    at: str
    lineage: str
    path: Path  # where the restored data now is (live path, --to file, or nothing)
    version: int
    tables: dict[str, int]
    retired: str | None
    applied: bool


def restore_at(inputs: Inputs, tenant: str, at: datetime, log: Logger, *,
               to: Path | None = None, dry_run: bool = False, wait: bool = True
               ) -> PitrResult:
    settings = inputs.desired.settings
    if settings.backup is None:
        raise PermanentError("backups are off — set settings.backup in "
                             f"{inputs.desired.source.name} (see README, Backups)")
    chosen = choose(points(inputs, tenant), at)
    latest, timeout = inputs.catalog.latest, settings.busy_timeout
    when = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if to is not None:
        if os.path.lexists(to):
            raise PermanentError(f"{to} exists — --to writes a new file; pick another name")
        done = stage(chosen.url, to.absolute(), target(chosen, at), latest, timeout)
        return PitrResult(tenant, when, chosen.lineage, done.path, done.version,
                          done.tables, None, False)
    staging = settings.restore_dir
    tenantdb.ensure_dir(staging)
    if dry_run:
        probe = relocate.free_name(staging, f".{tenant}-dry-run")
        try:
            done = stage(chosen.url, probe, target(chosen, at), latest, timeout)
        finally:
            tenantdb.remove_quietly(probe)  # our own scratch copy, never in service
        return PitrResult(tenant, when, chosen.lineage, Path(chosen.path), done.version,
                          done.tables, None, False)
    with locked_registry(inputs, log, wait) as registry:
        ctx = Context(inputs.desired, inputs.catalog, registry, inputs.revision, log)
        done, retired = into_service(ctx, tenant, chosen.url, chosen.lineage, when,
                                     target(chosen, at))
    return PitrResult(tenant, when, chosen.lineage, done.path, done.version, done.tables,
                      str(retired), True)


def into_service(ctx: Context, tenant: str, url: str, lineage: str, when: str,
                 at: datetime | None, txid: int | None = None,
                 failed: dict[str, object] | None = None, version: int | None = None
                 ) -> tuple[Verified, Path]:
    """Steps 1-3 of the protocol for ``tenant`` (in service, no journal) under the
    caller's fleet lock: stage ``url`` at ``at`` (or exactly at ``txid``), verify,
    retire the live file, switch the copy in. ``failed``: the registry's failure
    record to keep (a failed migration put back stays ``failed``, with its backoff).
    Returns the verified copy (at the live path) and where the live file was retired.
    Raises ``PermanentError`` when the tenant cannot be restored (nothing changed)."""
    settings, registry = ctx.desired.settings, ctx.registry
    latest, timeout = ctx.catalog.latest, settings.busy_timeout
    row = registry.tenant(tenant)
    if row is None or row.status in ("archived", "missing"):
        state = row.status if row else "not registered"
        raise PermanentError(f"{tenant} is {state}; `restore --at` replaces a file in "
                             "service — use `--to FILE` then `restore --from FILE`")
    journal = registry.journal_row(tenant)
    if journal is not None:
        raise PermanentError(f"{tenant} has an unfinished {journal.action} (phase "
                             f"{journal.phase}); run `reconcile` to finish it first")
    staging = settings.restore_dir
    tenantdb.ensure_dir(staging)
    _retire_leftovers(staging, tenant, settings.retired_dir)
    staged = relocate.free_name(staging, tenant)
    done = stage(url, staged, at, latest, timeout, txid)
    if version is not None and done.version != version:
        _retire_leftovers(staging, tenant, settings.retired_dir)
        raise PermanentError(f"the replica's copy of {tenant} is at v{done.version}, "
                             f"expected v{version} — not restored")
    crash_point("pitr:after-stage")
    live = Path(row.path)
    retired = relocate.free_name(settings.retired_dir, f"{tenant}-{row.region}")
    point: dict[str, object] = {"at": when, "lineage": lineage}
    if txid is not None:
        point["txid"] = txid
    with registry.durable_transaction():
        registry.journal_set(tenant, "pitr", "retire", source=str(staged), dest=str(live),
                             detail={"region": row.region, "protected": row.protected,
                                     "status": row.status, **point,
                                     "retired_live": str(retired),
                                     **({"failed": failed} if failed else {})})
        registry.update_tenant(tenant, status="relocating")
        record(ctx, "pitr", tenant, Outcome(tenant, "pitr", "ok", row.schema_version,
                                            done.version, detail={
                                                **point, "staged": str(staged)}),
               level="warning")
    crash_point("pitr:after-journal")
    action = Action(Kind.RESTORE, tenant, row.region, path=live, source=staged,
                    protected=row.protected, detail="point-in-time restore")
    outcome = archive.restore(action, ctx)
    if outcome.outcome != "ok":
        raise PermanentError(f"restore of {tenant} stopped: {outcome.error or outcome}")
    replication.sync_registrations(settings, registry, ctx.log)
    return Verified(live, done.version, done.tables), retired


def finish_retire(journal: JournalRow, ctx: Context) -> JournalRow:
    """Phase 2 (``pitr``/``retire``), idempotent: Litestream lets go of the live file,
    which moves to ``_retired/``; then the journal becomes the archive restore's
    ``restore``/``copy`` with the staged file as its source. Returns that row."""
    assert journal.source and journal.dest
    detail = journal.details()
    live, staged = Path(journal.dest), Path(journal.source)
    if not os.path.lexists(staged):
        where = "left in place" if os.path.lexists(live) else \
            f"retired to {detail['retired_live']}"
        raise PermanentError(f"the staged copy {staged} of {journal.tenant} is gone; its "
                             f"file was {where} — put a copy back with `reconcile restore "
                             "--from`")
    settings = ctx.desired.settings
    replication.release(settings, live)
    with ctx.registry.transaction():
        replication.end_lineage(ctx.registry, journal.tenant)
    if os.path.lexists(replication.meta_dir(live)):
        target = settings.retired_dir / "litestream" / Path(detail["retired_live"]).stem
        tenantdb.ensure_dir(target.parent)
        os.rename(replication.meta_dir(live), target)
    relocate.move_out(live, Path(detail["retired_live"]), settings.busy_timeout,
                      "pitr:during-retire")
    crash_point("pitr:after-retire")
    temp = live.with_name(f".{live.name}.restoring")
    tenantdb.fresh_file(temp)
    with ctx.registry.durable_transaction():
        ctx.registry.journal_clear(journal.tenant)
        ctx.registry.journal_set(journal.tenant, "restore", "copy", source=str(staged),
                                 dest=str(live), temp=str(temp),
                                 detail={"region": detail.get("region"),
                                         "protected": detail.get("protected", False),
                                         "pitr": detail.get("at"),
                                         **({"failed": detail["failed"]}
                                            if detail.get("failed") else {})})
    row = ctx.registry.journal_row(journal.tenant)
    assert row is not None
    return row


def _retire_leftovers(staging: Path, tenant: str, retired_dir: Path) -> None:
    """What a killed earlier restore of ``tenant`` left (no journal names it): a
    verified staged copy moves to ``_retired/``; an unfinished Litestream output
    (``….partial``, a scratch copy of the replica, never tenant data) is removed."""
    try:
        entries = list(os.scandir(staging))
    except FileNotFoundError:
        return
    for e in entries:
        if not e.is_file(follow_symlinks=False):
            continue
        base = e.name.lstrip(".").split(".db", 1)[0]
        if base.rpartition("-")[0] not in (tenant, f"{tenant}-dry-run"):
            continue
        if e.name.endswith(".db") and not e.name.startswith("."):
            tenantdb.ensure_dir(retired_dir)
            os.rename(e.path, relocate.free_name(retired_dir, f"{tenant}-staged"))
        elif ".db.partial" in e.name or e.name.startswith("."):
            tenantdb.remove_quietly(Path(e.path))
