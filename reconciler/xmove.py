"""Cross-host relocation through the replica (issue 15 item 3): the shell of ``xplan``.

Why a module of its own: a tenant moving from the ``eu`` host to the ``us`` host never
travels by file copy between hosts — the only shared thing is the replica store. The
source agent fences the tenant and brings its Litestream replica to a final position;
the destination agent restores exactly that position, verifies it and registers it at
a higher generation; only then does the source retire its copy. Each side journals
every phase in its own registry (``journal`` rows ``xmove-out`` / ``xmove-in``), so a
SIGKILL of either agent anywhere, or the replica store down in the middle, ends with
exactly one live copy and no acknowledged write lost. ``relocate`` (a move between two
directories of one host) is a different operation and stays as it is.

Phases and crash points (``RECONCILE_CRASH_AT``, SPEC-15):

source (``handoff``): journal ``fence`` + status ``relocating`` (routers refuse, writers'
confirm-at-commit fails) → ``xmove:after-fence`` → quiesce (take and release the
file's write lock: writers in flight finish) → Litestream ``sync`` → final txid →
``xmove:after-sync`` → content digest (Litestream's own tables excluded) → ``handoffs``
row + journal ``handed-off`` in one transaction → ``xmove:after-handoff``.

destination (``takeover``): journal ``restore`` → ``litestream restore -txid`` into
``_restore/`` staging → ``xmove:after-restore`` → verify (integrity_check,
``user_version``, digest) → journal ``verified`` → ``xmove:after-verify`` → the
staged file into place, then the row (active, the handoff's generation), its domains
and the journal's end in one transaction → ``xmove:after-register`` → its new lineage
registered with Litestream and synced.

source (``release``, once a peer view shows the tenant at ≥ the handoff's generation):
journal ``retire`` → ``xmove:before-retire`` → Litestream lets go, the file moves to
``_retired/`` → ``xmove:after-retire`` → its rows, domains, handoff and journal deleted
in one transaction.

Invariants: a file is never deleted (a retired copy, an abandoned staging copy go to
``_retired/``); the source's copy stays until the destination is registered; nothing
is registered that did not verify equal to the fenced file's digest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from reconciler import litestream, replication, tenantdb
from reconciler.actions import Action
from reconciler.backup import LITESTREAM_TABLES
from reconciler.context import OK, Context, Outcome, Timer, crash_point, record
from reconciler.errors import PermanentError, ReconcileError, RetryableError
from reconciler.relocate import free_name, move_out, quote, write_locked
from reconciler.state import Handoff
from reconciler.xplan import HANDED_OFF, IN, OUT, RETIRE, handoff_of

SIDECARS = ("-wal", "-shm")


# ------------------------------------------------------------------------- digest
def digest(conn: sqlite3.Connection) -> str:
    """Hex SHA-256 of a database's schema and every row of every table, Litestream's
    own tables (``backup.LITESTREAM_TABLES``) excluded, rows in key order — equal for
    two files holding the same data whatever their page layout."""
    h = hashlib.sha256()
    h.update(f"v{conn.execute('PRAGMA user_version').fetchone()[0]}".encode())
    schema = [r for r in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema "
                                      "ORDER BY type, name")
              if r[1] not in LITESTREAM_TABLES and r[2] not in LITESTREAM_TABLES]
    h.update(repr(schema).encode())
    for kind, name, _tbl, sql in schema:
        if kind != "table" or (sql or "").upper().startswith("CREATE VIRTUAL"):
            continue
        q = quote(name)
        try:
            cursor = conn.execute(f"SELECT rowid, * FROM {q} ORDER BY rowid")
        except sqlite3.OperationalError:  # WITHOUT ROWID: every column orders it
            cols = ", ".join(quote(r[1]) for r in conn.execute(f"PRAGMA table_info({q})"))
            cursor = conn.execute(f"SELECT * FROM {q} ORDER BY {cols}")
        h.update(f"\x00table {name}\x00".encode())
        while batch := cursor.fetchmany(1000):
            for row in batch:
                h.update(repr(row).encode())
                h.update(b"\x1e")
    return h.hexdigest()


def digest_file(path: Path, busy_timeout: float) -> tuple[int, str]:
    """(``user_version``, ``digest``) of the database at ``path``."""
    conn = tenantdb.connect(path, busy_timeout)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0]), digest(conn)
    finally:
        conn.close()


def verify(path: Path, handoff: Handoff, busy_timeout: float) -> None:
    """The restored copy at ``path`` is the handed-off file: ``integrity_check`` passes,
    ``user_version`` and content digest equal the handoff's. Raises PermanentError."""
    with tenantdb.checked_copy(path, busy_timeout) as conn:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        found = digest(conn)
    if version != handoff.schema_version:
        raise PermanentError(f"restored copy {path} is at v{version}, the handoff says "
                             f"v{handoff.schema_version} — not registered")
    if found != handoff.digest:
        raise PermanentError(f"restored copy {path} (txid {handoff.txid}) differs from the "
                             "handed-off file's content — not registered")


# ------------------------------------------------------------------------- source side
def _detail(h: Handoff, **extra: Any) -> dict[str, Any]:
    d = dataclasses.asdict(h)
    del d["tenant"], d["seq"]  # seq: where a registry wrote it, not what is handed off
    return {**d, **extra}


#: seconds a handoff waits for Litestream's sync of the fenced file (quiesced: only what
#: it had not shipped yet) before it is retried at the next pass
SYNC_TIMEOUT = 10


def handoff(action: Action, ctx: Context) -> Outcome:
    """Fence the tenant, bring its replica to the final txid and publish the handoff."""
    name, settings = action.tenant, ctx.desired.settings
    timer = Timer()
    row = ctx.registry.tenant(name)
    if row is None or action.region is None:
        raise PermanentError(f"handing off {name}: no registry row or no destination")
    path = Path(row.path)
    ctl = replication.control(settings, name)
    current = {lin.tenant: lin for lin in replication.lineages(ctx.registry)}
    lineage = current.get(name)
    if ctl is None or lineage is None or not ctl.alive():
        # checked before the tenant is fenced: it keeps serving until it can be moved
        raise RetryableError(f"handing off {name}: its file is not replicated yet "
                             "(Litestream not running or not registered) — retried")
    journal = ctx.registry.journal_row(name)
    if journal is None or journal.action != OUT:
        previous = row.status if row.status != "relocating" else "active"
        with ctx.registry.durable_transaction():
            ctx.registry.journal_set(name, OUT, "fence", source=str(path), detail={
                "to_region": action.region, "from_region": row.region, "status": previous})
            ctx.registry.update_tenant(name, status="relocating")
            record(ctx, action, name, "fenced", to_region=action.region)
        crash_point("xmove:after-fence")
    with write_locked(path, settings.busy_timeout):
        pass  # writers in flight finish; later ones see ``relocating`` at commit
    if replication.past_published(ctl, path):
        # an application killed inside a commit left Litestream with frames SQLite never
        # published: the replica at any txid from now would not be this file (the
        # destination's verify would refuse it for ever); a new snapshot first
        replication.restart(settings, ctl, name, path, ctx.log)
    if str(path) not in ctl.databases():  # a restarted Litestream skips fenced files
        ctl.register_for_sync(path, lineage.url, SYNC_TIMEOUT)  # the same lineage
    # RetryableError while the replica store is down: resumed next pass (a short wait:
    # the pass holds the fleet lock, the rest of the region waits behind it)
    txid = ctl.sync(path, SYNC_TIMEOUT)
    crash_point("xmove:after-sync")
    version, content = digest_file(path, settings.busy_timeout)
    generation = _generation(ctx, name) + 1
    h = Handoff(name, action.region, lineage.url, txid, version, content, generation)
    outcome = Outcome(name, action.kind.value, OK, version, version, timer.ms,
                      detail={"to_region": action.region, "txid": txid,
                              "generation": generation, "replica": lineage.url})
    with ctx.registry.durable_transaction():
        ctx.registry.journal_set(name, OUT, HANDED_OFF, detail=_detail(
            h, from_region=row.region, status=_previous(ctx, name)))
        ctx.registry.put_handoff(h)
        record(ctx, action, name, outcome)
    crash_point("xmove:after-handoff")
    ctx.registry.confirm()  # the destination acts on the row once a later commit shows
    return outcome


def _generation(ctx: Context, name: str) -> int:
    found = ctx.registry.conn.execute("SELECT generation FROM tenants WHERE name = ?",
                                      (name,)).fetchone()
    return int(found[0]) if found is not None else 0


def _previous(ctx: Context, name: str) -> str:
    journal = ctx.registry.journal_row(name)
    status = journal.details().get("status") if journal is not None else None
    return status if isinstance(status, str) else "active"


def release(action: Action, ctx: Context) -> Outcome:
    """The destination holds the tenant: retire the copy here and forget the tenant."""
    name, settings = action.tenant, ctx.desired.settings
    journal = ctx.registry.journal_row(name)
    if journal is None or journal.action != OUT or not journal.source:
        raise PermanentError(f"releasing {name}: no handoff journaled here")
    source = Path(journal.source)
    retired_text = journal.details().get("retired_path")
    if journal.phase != RETIRE or not isinstance(retired_text, str):
        retired = free_name(settings.retired_dir, f"{name}-{journal.details().get('from_region')}")
        with ctx.registry.durable_transaction():
            ctx.registry.journal_set(name, OUT, RETIRE,
                                     detail={**journal.details(), "retired_path": str(retired)})
        crash_point("xmove:before-retire")
    else:
        retired = Path(retired_text)
    ctl = replication.control(settings, name)
    if ctl is not None and ctl.alive() and str(source) in ctl.databases():
        replication.release(settings, source)  # Litestream syncs what it has, lets go
    move_out(source, retired, settings.busy_timeout, "xmove:during-retire")
    crash_point("xmove:after-retire")
    outcome = Outcome(name, action.kind.value, OK, action.from_version, action.to_version,
                      detail={"to_region": action.region, "retired": str(retired)})
    with ctx.registry.durable_transaction():
        for sql in ("DELETE FROM domains WHERE tenant = ?", "DELETE FROM handoffs WHERE "
                    "tenant = ?", "DELETE FROM tenants WHERE name = ?"):
            ctx.registry.conn.execute(sql, (name,))
        replication.end_lineage(ctx.registry, name)
        ctx.registry.journal_clear(name)
        record(ctx, action, name, outcome)
    return outcome


def cancel(action: Action, ctx: Context) -> Outcome:
    """Declared here (or elsewhere) again before any peer registered it: back in
    service here, the handoff withdrawn."""
    name = action.tenant
    previous = _previous(ctx, name)
    outcome = Outcome(name, action.kind.value, OK, action.from_version, action.to_version,
                      detail={"reason": action.detail, "status": previous})
    with ctx.registry.durable_transaction():
        ctx.registry.conn.execute("DELETE FROM handoffs WHERE tenant = ?", (name,))
        ctx.registry.update_tenant(name, status=previous)
        ctx.registry.journal_clear(name)
        record(ctx, action, name, outcome, level="warning")
    return outcome


# ------------------------------------------------------------------------- destination
def takeover(action: Action, ctx: Context) -> Outcome:
    """Restore the handed-off txid, verify it, register it at the handoff's generation."""
    name, settings, h = action.tenant, ctx.desired.settings, action.handoff
    if h is None or action.region is None:
        raise PermanentError(f"taking over {name}: no handoff")
    timer = Timer()
    dest = ctx.desired.tenant_path(name, action.region)
    staging = settings.restore_dir / f"{name}.xmove.db"
    journal = ctx.registry.journal_row(name)
    if journal is None:
        if os.path.lexists(dest):
            raise PermanentError(f"taking over {name}: a file already exists at {dest}; "
                                 "move it away — nothing was changed")
        with ctx.registry.durable_transaction():
            ctx.registry.journal_set(name, IN, "restore", dest=str(dest), temp=str(staging),
                                     detail=_detail(h, from_region=action.from_region))
        journal = ctx.registry.journal_row(name)
        assert journal is not None
    elif journal.action != IN:
        raise PermanentError(f"{name} has an unfinished {journal.action}; finished first")
    h = handoff_of(journal)  # what was journaled is what is restored
    verified = False
    if journal.phase == "restore":
        _stage(h, staging, settings.busy_timeout)
        crash_point("xmove:after-restore")
        verify(staging, h, settings.busy_timeout)
        with ctx.registry.durable_transaction():
            ctx.registry.journal_set(name, IN, "verified")
        crash_point("xmove:after-verify")
        verified = True
    if os.path.lexists(staging):
        if os.path.lexists(dest):
            raise PermanentError(f"taking over {name}: a file appeared at {dest}; move it "
                                 "away — the verified copy waits in " + str(staging))
        tenantdb.ensure_dir(dest.parent)
        os.rename(staging, dest)
        tenantdb.fsync_dir(dest.parent)
        tenantdb.fsync_dir(staging.parent)
    if not verified:  # verified by a killed run: checked again where it now is
        verify(dest, h, settings.busy_timeout)
    outcome = Outcome(name, action.kind.value, OK, h.schema_version, h.schema_version,
                      timer.ms, detail={"from_region": journal.details().get("from_region"),
                                        "txid": h.txid, "generation": h.generation,
                                        "path": str(dest)})
    with ctx.registry.durable_transaction():
        ctx.registry.upsert_tenant(name, action.region, dest, h.schema_version, "active",
                                   action.protected)
        ctx.registry.took_over(h)
        for domain, tenant in ctx.desired.domains().items():
            if tenant == name:
                ctx.registry.set_domain(domain, name)
        ctx.registry.journal_clear(name)
        record(ctx, action, name, outcome)
    crash_point("xmove:after-register")
    ctx.registry.confirm()  # the source retires its copy once a later commit shows
    _replicate(ctx, name, dest)
    return outcome


def _stage(h: Handoff, staging: Path, busy_timeout: float) -> None:
    """``litestream restore -txid`` of the handoff into ``staging`` (a new file)."""
    partial = staging.with_name(staging.name + ".partial")
    for p in (staging, partial, *(Path(f"{q}{s}") for q in (staging, partial)
                                  for s in SIDECARS)):
        tenantdb.remove_quietly(p)  # a killed stage's copy, never in service
    tenantdb.ensure_dir(staging.parent)
    litestream.restore(h.replica_url, partial, None, txid=h.txid)
    conn = tenantdb.connect(partial, busy_timeout)
    try:
        conn.execute("PRAGMA journal_mode=WAL")  # as tenant files are served
    finally:
        conn.close()
    tenantdb.fsync_file(partial)
    os.rename(partial, staging)
    tenantdb.fsync_dir(staging.parent)


def _replicate(ctx: Context, name: str, dest: Path) -> None:
    """The new file starts its own lineage at once (else at the end of the pass)."""
    backup, ctl = ctx.desired.settings.backup, replication.control(ctx.desired.settings, name)
    if backup is None or ctl is None:
        return
    current = {lin.tenant: lin for lin in replication.lineages(ctx.registry)}
    try:
        with ctx.registry.transaction():
            lin = replication.lineage_for(ctx.registry, ctx.desired.settings, backup, name,
                                          dest, current)
        if lin is not None:
            litestream.ensure_bucket(lin.url)
            ctl.register_for_sync(dest, lin.url)
            ctl.sync(dest)
    except ReconcileError as exc:
        ctx.log.warning("takeover: new lineage not replicated yet", tenant=name,
                        error=str(exc))


def abandon(action: Action, ctx: Context) -> Outcome:
    """The source withdrew its handoff before this side registered: the staged copy is
    kept aside in ``_retired/`` (never deleted), nothing registered."""
    name, settings = action.tenant, ctx.desired.settings
    journal = ctx.registry.journal_row(name)
    kept = None
    if journal is not None and journal.temp and os.path.lexists(journal.temp):
        kept = free_name(settings.retired_dir, f"{name}-abandoned")
        tenantdb.ensure_dir(kept.parent)
        os.rename(journal.temp, kept)
    for leftover in (Path(f"{journal.temp}.partial") if journal and journal.temp else None,):
        if leftover is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)  # an unfinished restore: never data of record
    outcome = Outcome(name, action.kind.value, OK, detail={"reason": action.detail,
                                                           "kept": str(kept) if kept else None})
    with ctx.registry.durable_transaction():
        ctx.registry.journal_clear(name)
        record(ctx, action, name, outcome, level="warning")
    return outcome
