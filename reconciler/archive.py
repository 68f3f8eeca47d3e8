"""Archive removed tenants and restore re-declared ones (DESIGN §5, issue 3).

Why: a tenant removed from ``tenants.yaml`` (with ``prune: archive``) leaves service,
but its data is kept; declaring it again brings that data back, never an empty file.
The planner enforces the guards (``prune`` off by default, ``prune_limit``,
``protected``, no archiving when no tenant is declared); this module only moves files.

Archive, journaled as ``archive``/``move`` before it starts: status ``relocating``
(applications stop opening the file), wait for in-flight writers, checkpoint, move
the file (with any ``-wal``/``-shm``) to ``<data_dir>/_archive/<name>-<UTC stamp>.db``
— a rename on one filesystem, a verified copy across two — then one transaction:
status ``archived``, path = the archive, domains removed from routing, journal cleared.

Restore (plan action ``restore``, the newest archive), journaled as ``restore`` with
phases ``copy`` → ``link`` → ``retire``: a verified copy of the archive is placed at the
tenant's path (never over an existing file) and registered ``active``; the archive
itself then moves to ``_retired/`` (it is stale from now on; ``gc`` may delete it). A
killed run redoes the unfinished phase: a temp copy is discarded, a placed copy that
verifies equal to the archive is kept. A stop-now (``ctx.stop_now``, the daemon's second
signal) ends either action at a journaled phase boundary; the next pass resumes there.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from reconciler import copyverify, fleet, relocate, replication, tenantdb
from reconciler.actions import Action, Kind
from reconciler.context import OK, Context, Outcome, Timer, crash_point, record
from reconciler.errors import PermanentError
from reconciler.registry import JournalRow


def archive(action: Action, ctx: Context) -> Outcome:
    name, timer = action.tenant, Timer()
    journal = ctx.registry.journal_row(name)
    fleet.check_journal(ctx.desired, journal)  # its own fleet's files only
    if journal is not None and journal.action != "archive":
        raise PermanentError(f"{name} has an unfinished {journal.action} (phase "
                             f"{journal.phase}); it is finished first")
    if journal is None:
        row = ctx.registry.tenant(name)
        if row is None:
            raise PermanentError(f"archiving {name}: it is not registered")
        source = Path(row.path)
        fleet.check(ctx.desired, source, f"archiving {name}: its file")
        if not os.path.lexists(source):
            raise PermanentError(f"archiving {name}: its file {source} is gone — nothing "
                                 "was changed")
        archive_dir = ctx.desired.settings.archive_dir
        tenantdb.ensure_dir(archive_dir)
        target = relocate.free_name(archive_dir, name)
        with ctx.registry.durable_transaction():
            ctx.registry.journal_set(name, "archive", "move", source=str(source),
                                     dest=str(target), detail={"status": row.status})
            ctx.registry.update_tenant(name, status="relocating")
        crash_point("archive:before-move")
        journal = ctx.registry.journal_row(name)
        assert journal is not None
    assert journal.source and journal.dest
    source, target = Path(journal.source), Path(journal.dest)
    replication.release(ctx.desired.settings, source)  # Litestream lets go first
    relocate.move_out(source, target, ctx.desired.settings.busy_timeout, "archive:during-move")
    crash_point("archive:after-move")
    version = copyverify.fingerprint_file(target, ctx.desired.settings.busy_timeout,
                                        content=False).user_version
    outcome = Outcome(name, "archive", OK, version, version, timer.ms,
                      detail={"path": str(target), "from": str(source)})
    # declared again while a killed run was archiving it: brought straight back below,
    # keeping the domains this pass's plan counts on
    back = action.path is not None and action.detail.startswith("resume")
    with ctx.registry.durable_transaction():
        ctx.registry.update_tenant(name, status="archived", path=target,
                                   schema_version=version)
        if not back:
            ctx.registry.delete_domains(name)  # out of routing together with the status
        ctx.registry.journal_clear(name)
        record(ctx, action, name, outcome)
    if back and (stopped := relocate.stopped_between(ctx, action, "restore", "start")):
        return stopped
    if back:
        return restore(replace(action, kind=Kind.RESTORE, source=target), ctx)
    return outcome


def restore(action: Action, ctx: Context) -> Outcome:
    name, timer = action.tenant, Timer()
    timeout = ctx.desired.settings.busy_timeout
    journal = ctx.registry.journal_row(name)
    fleet.check_journal(ctx.desired, journal)  # its own fleet's files only
    if journal is not None and journal.action == "pitr":  # issue 14: live file out first
        from reconciler import pitr  # (pitr builds on this module)

        journal = pitr.finish_retire(journal, ctx)
    if journal is not None and journal.action != "restore":
        raise PermanentError(f"{name} has an unfinished {journal.action} (phase "
                             f"{journal.phase}); it is finished first")
    if journal is None:
        journal = _start_restore(action, ctx)
    assert journal.source and journal.dest and journal.temp
    source, dest, temp = Path(journal.source), Path(journal.dest), Path(journal.temp)
    detail = journal.details()
    if journal.phase in ("copy", "link"):
        tenantdb.remove_quietly(temp)  # a killed run's copy, never in service
        expected = copyverify.fingerprint_file(source, timeout, content=False)
        if os.path.lexists(dest):
            # placed by a killed run of ours (the start refused an existing file)
            copyverify.verify_copy(dest, expected, timeout, source)
        else:
            relocate.copy_into(source, temp, timeout, during="restore:during-copy")
            copyverify.verify_copy(temp, expected, timeout, source)
            relocate.set_journal_mode(temp, "wal", timeout)
            crash_point("restore:after-copy")
            with ctx.registry.durable_transaction():
                ctx.registry.journal_set(name, "restore", "link")
            relocate.link_into_place(temp, dest)
            crash_point("restore:after-link")
            if (stopped := relocate.stopped_between(ctx, action, "restore", "link")):
                return stopped
        retired = relocate.free_name(ctx.desired.settings.retired_dir, f"{name}-archive")
        with ctx.registry.durable_transaction():
            failed = detail.get("failed")  # a failed migration put back (issue 14)
            ctx.registry.upsert_tenant(name, detail.get("region", action.region or ""), dest,
                                       expected.user_version,
                                       "failed" if failed else "active",
                                       bool(detail.get("protected", action.protected)))
            ctx.registry.update_tenant(name, **(failed or {
                "failure": None, "failed_key": None, "failures": 0, "retry_at": None}))
            ctx.registry.journal_set(name, "restore", "retire",
                                     detail={**detail, "retired_path": str(retired)})
        crash_point("restore:after-register")
        if (stopped := relocate.stopped_between(ctx, action, "restore", "retire")):
            return stopped
        journal = ctx.registry.journal_row(name)
        assert journal is not None and journal.detail
        detail = journal.details()
    retired = Path(detail["retired_path"])
    relocate.move_out(source, retired, timeout, "restore:during-retire")
    row = ctx.registry.tenant(name)
    version = row.schema_version if row is not None else None
    outcome = Outcome(name, "restore", OK, version, version, timer.ms,
                      detail={"from": str(source), "path": str(dest), "retired": str(retired)})
    with ctx.registry.transaction():
        ctx.registry.journal_clear(name)
        record(ctx, action, name, outcome)
    return outcome


def _start_restore(action: Action, ctx: Context) -> JournalRow:
    name = action.tenant
    if action.source is None or action.path is None:
        raise PermanentError(f"restoring {name}: no archive or no destination")
    dest = action.path
    tenantdb.ensure_dir(dest.parent)
    if os.path.lexists(dest):
        raise PermanentError(f"restoring {name}: a file already exists at {dest} and an "
                             f"archive {action.source} too; keep one — move the other away "
                             "— nothing was changed")
    temp = dest.with_name(f".{dest.name}.restoring")
    # proves the destination is writable before anything is journaled; the temp itself
    # is created only once the journal names it (a kill between would orphan it)
    tenantdb.prove_writable(dest.parent)
    crash_point("restore:before-journal")
    with ctx.registry.durable_transaction():
        ctx.registry.journal_set(name, "restore", "copy", source=str(action.source),
                                 dest=str(dest), temp=str(temp),
                                 detail={"region": action.region,
                                         "protected": action.protected})
    journal = ctx.registry.journal_row(name)
    assert journal is not None
    return journal
