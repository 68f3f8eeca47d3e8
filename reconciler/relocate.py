"""Relocate a tenant database between region directories (DESIGN §5, issue 3), and the
verified-copy and move-out-of-service primitives that archive and restore share (what
"verified" means, fingerprints and comparisons, lives in ``copyverify``).

Why: a tenant's file is the customer's only copy of their data, and data locality is
a legal promise. Moving it must never lose a committed row, never leave two files in
service, and survive ``SIGKILL`` at any instant.

The protocol (each phase is written to the registry's ``journal`` *before* it starts):

1. ``copy``   — status ``relocating`` (applications stop opening the file), then take
   the source's write lock (``BEGIN IMMEDIATE``: waits for in-flight writers through
   SQLite's own locking and keeps new ones out until the registry is switched), copy
   it with the backup API in steps into a temp file in the destination directory,
   fsync file and directory;
2. ``verify`` — ``integrity_check`` of the copy, and the same ``user_version``, schema,
   per-table row counts and content as the locked source: the same pages byte for byte
   when both main files hold all their content (what a backup-API copy of an unchanged
   source is), else every row compared in SQL; a mismatch rolls back (temp removed,
   source stays in service with its previous status);
3. ``rename`` — link the copy into place (never over an existing file);
4. switch — one power-safe registry transaction: region, path, status, and journal
   phase ``retire`` (with where the source goes);
5. ``retire`` — checkpoint the source and move it (with ``-wal``/``-shm``) into
   ``<data_dir>/_retired/``; only ``reconcile gc`` ever deletes anything there.

Resume rules (next run, from the journal phase plus what is on disk): before
``rename`` the temp copy was never in service, so it is discarded and the copy redone
(or, when the tenant no longer wants that destination, the relocation is rolled back);
from ``rename`` on, a copy at the destination that verifies equal to the source is
finished forward; one that differs (the source changed after the crash) is retired
and the copy redone; from ``retire`` on, only the retirement is left. When the desired
region changed while the relocation was interrupted, the tenant then relocates again,
in the same run, to where it is wanted now.

Applications must resolve the path from the registry before each transaction and,
holding their write lock, check the tenant is still ``active`` at that path (see the
README); then no committed write can land in a retired file.

Nothing here ever renames across filesystems: data crosses a device boundary only by
a verified copy, and the source is unlinked only after its copy is verified in place.
"""

from __future__ import annotations

import calendar
import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from reconciler import fleet, replication, tenantdb
from reconciler.actions import Action
from reconciler.context import OK, PENDING, Context, Outcome, crash_point, record
from reconciler.copyverify import fingerprint, fingerprint_file, verify_copy
from reconciler.copyverify import quote as quote
from reconciler.errors import PermanentError, RetryableError, is_busy
from reconciler.registry import JournalRow

# pages per backup step: at least 8 steps, so "during copy" is a real, observable state;
# steps of a few MB cost no more than one big copy, steps of 64 pages cost 1.6× (bench/)
COPY_STEP_PAGES = (64, 4096)
COPY_STEPS = 8
SIDECARS = ("-wal", "-shm")


# --------------------------------------------------------------------------- primitives


@contextlib.contextmanager
def write_locked(path: Path, busy_timeout: float) -> Iterator[sqlite3.Connection]:
    """Hold ``path``'s write lock: in-flight writers finish first, new ones wait.

    A writer still busy after the busy timeout is a ``RetryableError`` (try next pass)."""
    conn = tenantdb.connect(path, busy_timeout)
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                raise RetryableError(f"{path} stayed busy for {busy_timeout:g}s (an "
                                     f"application holds its write lock): {exc}") from exc
            raise
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def copy_into(source: Path, temp: Path, busy_timeout: float, during: str | None = None
              ) -> None:
    """Copy ``source`` into a fresh ``temp`` with the backup API, then fsync it.

    Reads through SQLite (so committed ``-wal`` content is included); the caller holds
    the source's write lock when writers may exist. ``during`` names the crash point
    reached after the first step of a copy that needs more than one."""
    tenantdb.fresh_file(temp)  # ours by name, never in service
    reader = tenantdb.connect(source, busy_timeout)
    try:
        target = sqlite3.connect(temp, isolation_level=None)
        try:
            def progress(_status: int, remaining: int, _total: int) -> None:
                if during is not None and remaining > 0:
                    crash_point(during)

            reader.backup(target, pages=_step_pages(source), progress=progress)
            # one file, complete on its own: the copy's journal mode is rollback until
            # it is in service (a -wal beside a temp file would be one more thing to move)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    finally:
        reader.close()
    tenantdb.fsync_file(temp)
    tenantdb.fsync_dir(temp.parent)


def _step_pages(source: Path) -> int:
    low, high = COPY_STEP_PAGES
    return max(low, min(high, os.path.getsize(source) // 4096 // COPY_STEPS))


def set_journal_mode(path: Path, mode: str, busy_timeout: float) -> None:
    """Give a verified copy its source's journal mode (tenants run in WAL) before it is
    placed; closing the only connection leaves no ``-wal`` behind."""
    if mode.lower() not in ("wal", "delete", "truncate", "persist", "memory", "off"):
        mode = "wal"
    conn = tenantdb.connect(path, busy_timeout)
    try:
        conn.execute(f"PRAGMA journal_mode={mode}")
    finally:
        conn.close()
    tenantdb.fsync_file(path)


def link_into_place(temp: Path, dest: Path) -> None:
    """Atomically give a complete ``temp`` its final name, never over another file."""
    os.link(temp, dest)  # FileExistsError if anything is at dest: never overwrite
    os.unlink(temp)
    tenantdb.fsync_dir(dest.parent)


def stamp(now: float | None = None) -> str:
    """A sortable UTC timestamp without dashes (file names split on the last '-')."""
    t = time.time() if now is None else now
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(t)) + f"{int(t % 1 * 1000):03d}Z"


def unstamp(text: str) -> float | None:
    """The epoch seconds of a ``stamp`` (None when ``text`` is not one)."""
    try:
        base = time.strptime(text[:15], "%Y%m%dT%H%M%S")
        millis = int(text[15:18]) if text.endswith("Z") and len(text) == 19 else None
    except ValueError:
        return None
    if millis is None:
        return None
    return calendar.timegm(base) + millis / 1000


def elapsed_ms(started_at: str) -> int:
    """Milliseconds since a registry timestamp (``utcnow()``): an operation's duration
    across the runs it took."""
    try:
        base = calendar.timegm(time.strptime(started_at[:19], "%Y-%m-%dT%H:%M:%S"))
        return max(0, int((time.time() - base - float(started_at[19:-1] or 0)) * 1000))
    except ValueError:
        return 0


def free_name(directory: Path, stem: str) -> Path:
    """``<directory>/<stem>-<stamp>.db`` that does not exist yet."""
    while True:
        candidate = directory / f"{stem}-{stamp()}.db"
        if not os.path.lexists(candidate):
            return candidate
        time.sleep(0.002)


def _same_device(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def quiesce(path: Path, busy_timeout: float) -> None:
    """Wait for in-flight writers, then checkpoint so the main file holds everything."""
    with write_locked(path, busy_timeout):
        pass
    conn = tenantdb.connect(path, busy_timeout)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()  # the last connection out removes an emptied -wal and the -shm


def move_out(source: Path, target: Path, busy_timeout: float, during: str) -> None:
    """Move a database out of service to ``target`` (with its ``-wal``/``-shm``).

    Idempotent, so a killed move is finished by calling it again. Same filesystem: a
    rename (main file first, then any sidecar that survived the checkpoint). Another
    filesystem: a verified copy next to ``target``, then the source files are unlinked
    — the only unlink of tenant data outside ``gc``, and only once a verified copy is
    in place."""
    tenantdb.ensure_dir(target.parent)
    if os.path.lexists(source):
        quiesce(source, busy_timeout)
        if _same_device(source.parent, target.parent):
            if os.path.lexists(target):
                raise PermanentError(f"cannot retire {source}: {target} already exists")
            os.rename(source, target)
            crash_point(during)
            for suffix in SIDECARS:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(f"{source}{suffix}", f"{target}{suffix}")
        else:
            expected = fingerprint_file(source, busy_timeout, content=False)
            if os.path.lexists(target):
                verify_copy(target, expected, busy_timeout, source)  # ours, from a killed run
            else:
                temp = target.with_name(f".{target.name}.tmp")
                copy_into(source, temp, busy_timeout)
                verify_copy(temp, expected, busy_timeout, source)
                link_into_place(temp, target)
            crash_point(during)
            os.unlink(source)
            for suffix in SIDECARS:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{source}{suffix}")
    else:
        # the main file already moved: carry over what a killed run left beside it
        for suffix in SIDECARS:
            leftover = Path(f"{source}{suffix}")
            if not os.path.lexists(leftover):
                continue
            if _same_device(source.parent, target.parent):
                os.rename(leftover, f"{target}{suffix}")
            else:  # the copy was verified before the source was unlinked
                os.unlink(leftover)
    tenantdb.fsync_dir(target.parent)
    tenantdb.fsync_dir(source.parent)


# --------------------------------------------------------------------------- relocation


def run(action: Action, ctx: Context) -> Outcome:
    journal = ctx.registry.journal_row(action.tenant)
    fleet.check_journal(ctx.desired, journal)  # its own fleet's files only
    if journal is not None and journal.action == "relocate":
        outcome = _resume(action, journal, ctx)
        row = ctx.registry.tenant(action.tenant)
        if action.path is None or row is None or Path(row.path) == action.path:
            return outcome
        # the desired region changed while the relocation was interrupted: it was
        # finished or rolled back above, and now goes where it is wanted, this pass
        if outcome.outcome == PENDING:
            return outcome
        return _start(action, ctx)
    if journal is not None:
        raise PermanentError(f"{action.tenant} has an unfinished {journal.action} "
                             f"(phase {journal.phase}); it is finished first")
    return _start(action, ctx)


def _start(action: Action, ctx: Context) -> Outcome:
    name = action.tenant
    row = ctx.registry.tenant(name)
    if row is None or action.path is None or action.region is None:
        raise PermanentError(f"relocating {name}: no registry row or no destination")
    source, dest = Path(row.path), action.path
    fleet.check(ctx.desired, source, f"relocating {name}: its file")
    fleet.check(ctx.desired, dest, f"relocating {name} to")
    if dest == source:
        raise PermanentError(f"relocating {name}: already at {dest}")
    if not os.path.lexists(source):
        raise PermanentError(f"relocating {name}: its file {source} is gone — nothing "
                             "was changed")
    # everything that can be checked before the tenant is touched is checked here, so a
    # bad destination is an error for this tenant that changes nothing
    tenantdb.ensure_dir(dest.parent)
    if os.path.lexists(dest):
        raise PermanentError(f"relocating {name}: a file already exists at {dest}; move it "
                             "away (or `reconcile restore` it) — nothing was changed")
    temp = dest.with_name(f".{dest.name}.relocating")
    # the temp itself is created only once the journal names it (copy_into): a kill
    # between the two would leave a file no later run accounts for
    tenantdb.prove_writable(dest.parent)
    crash_point("relocate:before-journal")
    previous = row.status if row.status != "relocating" else "active"  # restored on roll back
    detail = {"from_region": row.region, "to_region": action.region, "status": previous}
    with ctx.registry.durable_transaction():
        ctx.registry.journal_set(name, "relocate", "copy", source=str(source), dest=str(dest),
                                 temp=str(temp), detail=detail)
        ctx.registry.update_tenant(name, status="relocating")
    ctx.log.info("relocate", tenant=name, phase="copy", source=str(source), dest=str(dest))
    crash_point("relocate:before-copy")
    journal = ctx.registry.journal_row(name)
    assert journal is not None
    return _forward(action, journal, ctx)


def _resume(action: Action, journal: JournalRow, ctx: Context) -> Outcome:
    assert journal.source and journal.dest and journal.temp
    source, dest, temp = Path(journal.source), Path(journal.dest), Path(journal.temp)
    timeout = ctx.desired.settings.busy_timeout
    ctx.log.warning("relocate", tenant=action.tenant, resume=journal.phase,
                    source=str(source), dest=str(dest))
    if journal.phase == "retire":
        return _retire(action, journal, ctx)
    tenantdb.remove_quietly(temp)  # never in service; redone from the source if needed
    if journal.phase == "rename" and os.path.lexists(dest):
        switched: JournalRow | None = None
        with write_locked(source, timeout) as lock:
            expected = fingerprint(lock, content=False)
            try:
                verify_copy(dest, expected, timeout, source)
            except PermanentError as exc:
                # the source changed after the crash (or the copy is damaged): the copy
                # is stale — keep it aside, never delete it, and copy again
                stale = free_name(ctx.desired.settings.retired_dir, f"{action.tenant}-stale")
                ctx.log.warning("relocate", tenant=action.tenant, stale_copy=str(stale),
                                reason=str(exc))
                tenantdb.ensure_dir(stale.parent)
                move_out(dest, stale, timeout, "relocate:during-stale")
            else:
                switched = _switch(action, journal, lock, ctx)
        if switched is not None:
            crash_point("relocate:after-switch")
            return _retire(action, switched, ctx)
    if action.path != dest:
        return _roll_back(action, journal, ctx, "the desired destination changed")
    with ctx.registry.durable_transaction():
        ctx.registry.journal_set(action.tenant, "relocate", "copy")
    return _forward(action, journal, ctx)


def _forward(action: Action, journal: JournalRow, ctx: Context) -> Outcome:
    assert journal.source and journal.dest and journal.temp
    source, dest, temp = Path(journal.source), Path(journal.dest), Path(journal.temp)
    name, timeout = action.tenant, ctx.desired.settings.busy_timeout
    try:
        with write_locked(source, timeout) as lock:
            mode = str(lock.execute("PRAGMA journal_mode").fetchone()[0])
            copy_into(source, temp, timeout, during="relocate:during-copy")
            crash_point("relocate:after-copy")
            with ctx.registry.durable_transaction():
                ctx.registry.journal_set(name, "relocate", "verify")
            if (stopped := stopped_between(ctx, action, "relocate", "verify")) is not None:
                return stopped
            verify_copy(temp, fingerprint(lock, content=False), timeout, source)
            set_journal_mode(temp, mode, timeout)
            crash_point("relocate:after-verify")
            with ctx.registry.durable_transaction():
                ctx.registry.journal_set(name, "relocate", "rename")
            link_into_place(temp, dest)
            crash_point("relocate:after-rename")
            if (stopped := stopped_between(ctx, action, "relocate", "rename")) is not None:
                return stopped
            switched = _switch(action, journal, lock, ctx)
    except (PermanentError, RetryableError, OSError, sqlite3.Error) as exc:
        # before the switch the source is still the tenant's file: put it back in
        # service unless the copy is already in place (then the next run finishes)
        current = ctx.registry.journal_row(name)
        if current is not None and current.phase in ("copy", "verify"):
            _roll_back(action, journal, ctx, str(exc), record_it=False)
        raise
    crash_point("relocate:after-switch")
    if (stopped := stopped_between(ctx, action, "relocate", "retire")) is not None:
        return stopped
    return _retire(action, switched, ctx)


def stopped_between(ctx: Context, action: Action, kind: str, phase: str) -> Outcome | None:
    """At a journaled phase boundary: when ``ctx.stop_now()``, record that the action
    stopped there (the next pass resumes from the journal) and return that outcome."""
    if not ctx.stop_now():
        return None
    outcome = Outcome(action.tenant, kind, PENDING, action.from_version, action.to_version,
                      error=f"stopped at once before phase {phase} (second signal); the "
                      "next pass resumes from the journal", detail={"phase": phase})
    with ctx.registry.transaction():
        record(ctx, action, action.tenant, outcome, level="warning")
    return outcome


def _switch(action: Action, journal: JournalRow, lock: sqlite3.Connection, ctx: Context
            ) -> JournalRow:
    """Switch routing to the placed copy while the source is still write-locked; the
    same power-safe transaction journals the retirement that follows."""
    assert journal.source and journal.dest
    name, detail = action.tenant, journal.details()
    version = int(lock.execute("PRAGMA user_version").fetchone()[0])
    retired = free_name(ctx.desired.settings.retired_dir,
                        f"{name}-{detail.get('from_region', 'old')}")
    previous = detail.get("status", "active")
    with ctx.registry.durable_transaction():
        ctx.registry.update_tenant(name, region=detail.get("to_region", action.region),
                                   path=Path(journal.dest), schema_version=version,
                                   status="failed" if previous == "failed" else "active")
        ctx.registry.journal_set(name, "relocate", "retire",
                                 detail={**detail, "retired_path": str(retired)})
    current = ctx.registry.journal_row(name)
    assert current is not None
    return current


def _retire(action: Action, journal: JournalRow, ctx: Context) -> Outcome:
    assert journal.source and journal.dest
    detail = journal.details()
    source, retired = Path(journal.source), Path(detail["retired_path"])
    if os.path.lexists(journal.dest):  # issue 14: the new file is replicated first
        replication.handover(ctx.desired.settings, ctx.registry, action.tenant,
                             Path(journal.dest), source)
    move_out(source, retired, ctx.desired.settings.busy_timeout, "relocate:during-retire")
    resumed = action.detail if action.detail.startswith("resume") else None
    outcome = Outcome(action.tenant, "relocate", OK, action.from_version, action.to_version,
                      elapsed_ms(journal.started_at),
                      detail={"from_region": detail.get("from_region"),
                              "region": detail.get("to_region"), "path": journal.dest,
                              "retired": str(retired), "resumed": resumed})
    with ctx.registry.transaction():
        ctx.registry.journal_clear(action.tenant)
        record(ctx, action, action.tenant, outcome)
    return outcome


def _roll_back(action: Action, journal: JournalRow, ctx: Context, why: str, *,
               record_it: bool = True) -> Outcome:
    """Before ``rename``: drop the temp copy, source back in service as it was."""
    if journal.temp:
        tenantdb.remove_quietly(Path(journal.temp))
    previous = journal.details().get("status", "active")
    outcome = Outcome(action.tenant, "relocate", OK, action.from_version, action.to_version,
                      detail={"rolled_back": why, "path": journal.source})
    with ctx.registry.durable_transaction():
        ctx.registry.update_tenant(action.tenant, status=previous)
        ctx.registry.journal_clear(action.tenant)
        if record_it:
            record(ctx, action, action.tenant, outcome, level="warning")
    return outcome
