"""A failed migration's tenant put back from its Litestream replica
(``rollout.snapshot: replica``, issue 14 item 5).

Why: ``rollout.snapshot: true`` copies every tenant before its migration — the fast
path, but a full copy per tenant per rollout. With backups on, the replica already
holds every committed state: recording the replica's position just before the first
step is enough to put the tenant back there if its migration fails after a step
committed (or its health gate fails), without any local copy.

How: before the first step the worker has Litestream sync the file (``/sync``, wait)
and records the replicated transaction id (``ReplicaMark``); on failure the calling
thread restores exactly that transaction (``litestream restore -txid``) through
``pitr.into_service`` — staged, verified (and at the pre-migration version), journaled
``pitr``, the migrated file retired to ``_retired/`` (never deleted), the copy switched
in; the tenant stays ``failed`` with its backoff, so the rollout does not retry it at
once.

Invariants (the same as the local snapshot's):
* an application's write is never discarded: the put-back happens only when no other
  connection committed to the file since the mark (``PRAGMA data_version`` of the
  worker's connection unchanged); otherwise the tenant stays as it is, and the error
  says which ``reconcile restore --at`` would put it back;
* no mark (Litestream not running, no replica yet, sync failed): the migration runs
  as without snapshots and the failure says why nothing was put back;
* a put-back killed at any phase is finished by the next pass (the ``pitr`` journal);
  one killed before its journal leaves the tenant ``failed`` at the version it
  reached, the mark in its ``putback``/``started`` event (txid, time, lineage).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler import replication
from reconciler.actions import Action
from reconciler.context import FAILED, OK, Context, record
from reconciler.errors import ReconcileError

SYNC_TIMEOUT = 30  # seconds Litestream may take to upload the pre-migration state


@dataclass(frozen=True)
class ReplicaMark:
    """The replica position of a tenant just before its first migration step."""

    tenant: str
    url: str  # the lineage's replica
    lineage: str
    txid: int  # Litestream's replicated transaction id
    at: float  # epoch seconds when it was recorded
    data_version: int = 0  # of the worker's connection right after the mark

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Marker = Callable[[Action, float], "tuple[ReplicaMark | None, str]"]


def marker(ctx: Context, actions: Iterable[Action]) -> Marker | None:
    """Calling thread: what the workers call to record each tenant's mark (None when
    ``rollout.snapshot`` is not ``replica`` or backups are off). Reads the tenants'
    current lineages now; the workers only talk to Litestream."""
    settings = ctx.desired.settings
    if not settings.rollout.from_replica or settings.backup is None:
        return None
    current = {}
    for a in actions:
        for lin in replication.lineages(ctx.registry, a.tenant):
            if lin.ended_at is None and lin.path == str(a.path):
                current[a.tenant] = lin

    def mark(action: Action, now: float) -> tuple[ReplicaMark | None, str]:
        lin = current.get(action.tenant)
        if lin is None or action.path is None:
            return None, "its file has no replica yet"
        ctl = replication.control(settings, action.tenant)
        if ctl is None:
            return None, "replication is not running"
        try:
            txid = ctl.sync(action.path, SYNC_TIMEOUT)
        except ReconcileError as exc:
            return None, f"Litestream did not confirm its position ({exc})"
        return ReplicaMark(action.tenant, lin.url, lin.lineage, txid, now), ""
    return mark


def put_back(ctx: Context, mark: ReplicaMark, version: int) -> tuple[bool, str]:
    """Calling thread, under the pass's lock, after the failure was recorded: restore
    the tenant from its replica at ``mark`` (exactly its txid), keeping its failure
    record. Returns whether it was put back and what happened, for the migration's
    error text."""
    from reconciler import pitr  # (pitr builds on the engine, which runs rollouts)

    row = ctx.registry.tenant(mark.tenant)
    failed: dict[str, object] = {} if row is None else {
        "failure": row.failure, "failed_key": row.failed_key, "failures": row.failures,
        "retry_at": row.retry_at}
    point: dict[str, Any] = {"txid": mark.txid, "at": mark.when, "lineage": mark.lineage,
                             "url": mark.url}
    with ctx.registry.transaction():
        record(ctx, "putback", mark.tenant, "started", **point)
    try:
        pitr.into_service(ctx, mark.tenant, mark.url, mark.lineage, mark.when, None,
                          txid=mark.txid, failed=failed, version=version)
    except (ReconcileError, OSError, sqlite3.Error) as exc:
        said = (f"not put back from the replica: {exc} — `reconcile restore {mark.tenant} "
                f"--at {mark.when}` does it by hand")
        ok = False
    else:
        said = f"put back from the replica at txid {mark.txid} ({mark.when}, v{version})"
        ok = True
    with ctx.registry.transaction():
        record(ctx, "putback", mark.tenant, OK if ok else FAILED, message=said, **point)
    return ok, said
