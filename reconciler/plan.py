"""The planner: a pure function from (desired, observed, catalog) to a ``Plan``.

Why a pure function: every decision the reconciler makes about customers' data is
made here, so it must be testable exhaustively and fast, with no files, clocks or
processes involved. ``apply`` only carries a plan out. What a plan is made of (``Kind``,
``Action``, ``Plan``) lives in ``actions``; the drift policy it applies in ``driftpolicy``;
both are as pure as this module.

Rules that protect data (DESIGN §5), enforced here:
* a registered tenant whose file is gone is reported ``missing``, never recreated;
* an undeclared tenant is ``orphaned`` and left alone unless ``prune: archive``,
  and even then never when protected, never beyond ``prune_limit`` per pass, and
  never when the desired state declares no tenants at all;
* a target below a file's version is refused (``downgrade``), never "repaired";
* a declared tenant with an archived copy is restored from it, never created empty;
* a tenant that failed with the same desired state and migrations is retried only
  after its backoff or when asked to (``retry_failed``), so a broken migration is
  not hammered in a loop;
* its own fleet only (fleet.py): a registered path outside the directories tenants.yaml
  declares is never acted on — the row is rerooted (first in the plan) to where this
  fleet keeps the file, an unfinished operation naming such a path is not resumed;
* every change apply makes is an action of its own (``suspend``, ``unsuspend``,
  ``reroot`` included), so ``--dry-run`` never hides one; a ``retired:`` tenant is
  acknowledged (``retired``): no problem, not routed, never archived.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler.actions import Action, Kind, Plan, RegistryChange
from reconciler.desired import Desired, TenantSpec
from reconciler.driftpolicy import with_drift
from reconciler.migrations import Catalog
from reconciler.state import FileStates, JournalRow, Observed, Snapshot, TenantRow
from reconciler.versions import unknown_version, unknown_version_hint


def _a(base: Action, kind: Kind, **changes: Any) -> Action:
    return replace(base, kind=kind, **changes)


def fingerprint(catalog: Catalog, target: int, region: str) -> str:
    """Identifies "the same attempt": same target, same migration files, same region."""
    h = hashlib.sha256(f"{target}:{region}".encode())
    for m in catalog.steps(0, target):
        h.update(m.sha256.encode())
    return h.hexdigest()[:16]


def waves(names: list[str], canary: int, batch: int) -> tuple[tuple[str, ...], ...]:
    """Deterministic rollout waves: the canary alone first, then batches."""
    ordered = sorted(names)
    out: list[tuple[str, ...]] = []
    if canary > 0 and ordered:
        out.append(tuple(ordered[:canary]))
        ordered = ordered[canary:]
    for i in range(0, len(ordered), batch):
        out.append(tuple(ordered[i : i + batch]))
    return tuple(out)


def rollout_key(desired: Desired, catalog: Catalog) -> str:
    """Identifies one rollout: the whole desired state plus every migration and check.

    A rollout that halted stays halted while this is unchanged: editing tenants.yaml,
    a migration or a health check starts a new rollout (so does ``--retry-failed``)."""
    h = hashlib.sha256(repr((desired.settings, sorted(desired.globals.items()),
                             sorted(desired.regions.items()),
                             sorted(desired.tenants.items()))).encode())
    for m in catalog.migrations:
        h.update(m.sha256.encode())
    for check in catalog.checks:
        h.update(f"{check.version}:".encode())
        for st in check.statements:
            h.update(st.sql.encode())
    return h.hexdigest()[:16]


def _hold_halted(actions: list[Action], reg: Snapshot) -> list[Action]:
    """A halted rollout is not retried in a loop: its migrations wait as ``pending``
    (failed tenants stay ``failed``) until the rollout key changes or --retry-failed."""
    out: list[Action] = []
    for a in actions:
        if a.kind is not Kind.MIGRATE:
            out.append(a)
            continue
        row = reg.tenants.get(a.tenant)
        if row is not None and row.status == "failed":
            out.append(_a(a, Kind.FAILED, status="failed", detail=f"{row.failure or 'failed'}"
                          " — rollout halted; fix it, then run with --retry-failed"))
        else:
            out.append(_a(a, Kind.PENDING, status="pending",
                          detail=f"rollout halted — stays at v{a.from_version} (→ v{a.to_version}"
                          " once it resumes)"))
    return out


def plan(desired: Desired, observed: Observed, catalog: Catalog, *, revision: str = "",
         retry_failed: bool = False) -> Plan:
    actions: list[Action] = []
    reg = observed.registry
    latest = catalog.latest
    notes: list[str] = []

    declared_at, journal = observed.declared, reg.journal
    version_at = (observed.files.version_of if isinstance(observed.files, FileStates)
                  else observed.version_at)
    fleet = observed.fleet
    rerooted = fleet.rerooted if fleet is not None else {}
    reroots: list[Action] = []  # first in the plan: every later action uses the new path
    drifted = observed.drift
    for name, spec in desired.tenants.items():
        row = reg.tenants.get(name)
        if rerooted and row is not None and name in rerooted:
            outside = row.path
            row = _reroot(row, rerooted[name], reroots)
            actions.extend(_explained(_plan_declared(desired, observed, catalog, spec, row,
                                                     retry_failed), outside, row.path))
            continue
        if (row is not None and row.status == "active" and not spec.suspended
                and row.region == spec.region and row.protected == spec.protected
                and row.path == declared_at.get(name) and name not in journal):
            target = desired.target_version(spec, latest)
            if (row.schema_version == target and version_at(row.path) == target
                    and (not drifted or row.path not in drifted)):
                # the steady state, checked first because a daemon sees little else:
                # registry and file agree, at the declared path and the target — exactly
                # the case _plan_declared turns into no action, decided here without a
                # Path, an Action or even a call per tenant
                continue
        # (a failed tenant whose backoff ran out is retried by _then_migrate; one that
        # failed its health gate at the target waits for --retry-failed, backoff or not)
        planned = _plan_declared(desired, observed, catalog, spec, row, retry_failed)
        if drifted and not spec.suspended:
            planned = with_drift(planned, desired, observed, spec, row)
        actions.extend(planned)

    for name in sorted(desired.retired - reg.tenants.keys()):
        notes.append(f"retired: {name} is not in the registry — nothing to acknowledge "
                     "(a typo, or already gone)")
    undeclared = _plan_undeclared(desired, observed, notes, reroots)
    actions.extend(undeclared)
    actions[:0] = reroots
    archiving = {a.tenant for a in undeclared if a.kind is Kind.ARCHIVE}

    key = ""
    if reg.rollout or any(a.kind is Kind.MIGRATE for a in actions):
        key = rollout_key(desired, catalog)
        if reg.rollout.get(key) == "halted" and not retry_failed:
            actions = _hold_halted(actions, reg)
    if observed.backups is not None and desired.settings.backup is not None:
        actions.extend(backup_problems(observed, desired.settings.backup.threshold,
                                       {a.tenant for a in actions}))
    migrating = [a.tenant for a in actions if a.kind is Kind.MIGRATE]
    ro = desired.settings.rollout
    default_target = latest if desired.settings.schema is None else desired.settings.schema
    return Plan(
        revision=revision,
        target=default_target,
        tenant_count=len(desired.tenants),
        actions=tuple(actions),
        registry=(*_fleet_changes(observed),
                  *_registry_changes(desired, observed, archiving)),
        waves=waves(migrating, ro.canary, ro.batch),
        notes=tuple(notes),
        declared=tuple(desired.tenants),
        rollout_key=key,
    )


def backup_problems(observed: Observed, threshold: float, busy: set[str]) -> list[Action]:
    """``no-backup`` reports (issue 14): a tenant in service whose replica is not
    current — never replicated, Litestream down, or lag above ``threshold`` seconds.
    Reported, never acted on: the tenant keeps serving. Tenants with another action
    this pass (``busy``) are judged on the next."""
    assert observed.backups is not None
    out: list[Action] = []
    for name, b in sorted(observed.backups.items()):
        if name in busy or b.good(threshold):
            continue
        if b.lag is not None:
            why = f"backup lags {b.lag:.0f}s (threshold {threshold:g}s)"
        else:
            why = "no backup yet"
        if b.error:
            why += f": {b.error}"
        row = observed.registry.tenants.get(name)
        out.append(Action(Kind.NO_BACKUP, name, row.region if row else None,
                          from_version=row.schema_version if row else None,
                          to_version=row.schema_version if row else None,
                          detail=why + " — the tenant keeps serving; see `reconcile status`"))
    return out


def _plan_declared(desired: Desired, observed: Observed, catalog: Catalog, spec: TenantSpec,
                   row: TenantRow | None, retry_failed: bool) -> list[Action]:
    name, region = spec.name, spec.region
    target = desired.target_version(spec, catalog.latest)
    want = desired.tenant_path(name, region)
    key = fingerprint(catalog, target, region)
    base = Action(Kind.CREATE, name, region, path=want, key=key, protected=spec.protected)
    region_problem = observed.regions[region].problem if region in observed.regions else None
    journal = observed.registry.journal.get(name)
    if journal is not None:  # a killed run's unfinished operation comes first
        return _resume(journal, row, observed, want, target, retry_failed, base,
                       catalog.latest)

    if row is not None and row.name in _unplaced(observed):
        return [_a(base, Kind.INVALID, source=Path(row.path), detail=_unplaced_detail(row))]

    if spec.suspended:
        if row is None:
            return [_a(base, Kind.SUSPENDED, detail="suspended — not created")]
        if row.status not in ("suspended", "archived", "missing"):
            return [_a(base, Kind.SUSPEND, from_version=row.schema_version,
                       to_version=row.schema_version, status="suspended",
                       detail=f"status {row.status} → suspended: routing answers 503, the "
                       "reconciler leaves it alone")]
        return [_a(base, Kind.SUSPENDED, from_version=row.schema_version,
                       detail="suspended — left alone", status=row.status)]

    if row is None or row.status == "archived":
        archives = observed.archives.get(name, ())
        here = observed.file(want)
        if archives:  # never start empty when a copy of the tenant's data exists
            return _restore(archives[-1], observed, catalog, target, row, retry_failed, base)
        if region_problem:
            return [_a(base, Kind.INVALID, detail=region_problem)]
        if here.exists:
            if not here.usable:
                return [_a(base, Kind.INVALID, detail=f"{want} {here.error} — not adopted; move "
                               "it away or replace it with the tenant's database")]
            v = here.user_version
            assert v is not None
            if not catalog.knows(v):
                return _unknown(base, want, v, catalog.latest)
            adopt = _a(base, Kind.ADOPT, from_version=v, to_version=v, status="active",
                       detail="file exists without a registry row — registered as is")
            return _then_migrate(adopt, here.user_version, target, None, retry_failed, base,
                                 observed.now)
        if row is not None:  # archived, but the archive is gone
            return [_a(base, Kind.MISSING, from_version=row.schema_version, status="archived",
                           detail=f"archived, but no copy is left in "
                           f"{desired.settings.archive_dir} — not recreated")]
        return [_a(base, Kind.CREATE, from_version=0, to_version=target, status="active",
                       detail=f"new database → v{target}")]

    current = Path(row.path)
    found = observed.file(current)
    if not found.exists:
        moved = observed.file(want) if want != current else None
        if moved is not None and moved.usable and observed.fleet is not None:
            # its registered file is gone and a database sits where tenants.yaml wants it
            # (moved there by hand): register that one — copying it back and forth between
            # the two places would only end in `restore` and `relocate` refusing each other
            reroot = _a(base, Kind.REROOT, from_region=row.region, source=current,
                        detail=f"registered file {current} is gone; {want} holds its database")
            return [reroot, *_plan_declared(desired, observed, catalog, spec,
                                            row._replace(path=str(want), region=region),
                                            retry_failed)]
        hint = (f"; a file exists at {want} — check it, then `reconcile restore {name} --from "
                f"{want}`" if moved is not None and moved.exists else
                f"; restore it with `reconcile restore {name} --from FILE`")
        return [_a(base, Kind.MISSING, from_version=row.schema_version, source=current,
                       status="missing", detail=f"registered at v{row.schema_version}, file "
                       f"{current} is gone — not recreated{hint}")]
    if not found.usable:
        return [_a(base, Kind.INVALID, source=current, status=None,
                       detail=f"{current} {found.error}")]

    out: list[Action] = []
    version = found.user_version
    assert version is not None
    if not catalog.knows(version):  # no correction, relocation or migration of it
        return _unknown(base, current, version, catalog.latest, source=current,
                        from_version=version)
    target_reached = version >= target
    if (row.status == "failed" and row.failed_key == key and target_reached
            and not retry_failed):
        # failed its health gate at the target: stays failed until someone looks
        return [_a(base, Kind.FAILED, from_version=version, to_version=target, status="failed",
                   detail=f"{row.failure or 'failed'} — fix it, then run with --retry-failed")]
    # "migrating" at the target: a pass died between a migration and its health gate
    unverified = row.status == "migrating" and version == target
    wrong_status = row.status != "active" and not unverified and not (
        row.status in ("failed", "pending", "migrating") and not target_reached)
    if row.status == "suspended":  # declared again without `suspended: true`
        out.append(_a(base, Kind.UNSUSPEND, from_version=row.schema_version,
                      to_version=version, source=current, status="active",
                      detail="suspended → active: back in service"))
        wrong_status = False
        row = row._replace(status="active")
    if row.schema_version != version or wrong_status or row.protected != spec.protected:
        reasons = []
        if row.schema_version != version:
            reasons.append(f"registry said v{row.schema_version}, file is at v{version}")
        if wrong_status:
            reasons.append(f"status {row.status} → active")
        if row.protected != spec.protected:
            reasons.append(f"protected → {str(spec.protected).lower()}")
        out.append(_a(base, Kind.CORRECT, from_version=row.schema_version, to_version=version,
                          source=current, status="migrating" if unverified else "active",
                          detail="; ".join(reasons)))

    if row.region != region or current != want:
        if region_problem:
            out.append(_a(base, Kind.INVALID, source=current, detail=region_problem))
            return out
        out.append(_a(base, Kind.RELOCATE, from_region=row.region, from_version=version,
                          to_version=version, source=current, status="active",
                          detail=f"{row.region} → {region}"))
    return out + _then_migrate(None, version, target, row, retry_failed, base, observed.now)


_RESUMABLE = {"relocate": Kind.RELOCATE, "archive": Kind.ARCHIVE, "restore": Kind.RESTORE,
              "pitr": Kind.RESTORE}  # a point-in-time restore ends as a restore


def _resume(journal: JournalRow, row: TenantRow | None, observed: Observed, want: Path | None,
            target: int, retry_failed: bool, base: Action, latest: int | None = None
            ) -> list[Action]:
    """Finish (or roll back) what a killed run journaled; the action module decides which
    from the journal phase and the files. ``want`` is None for an undeclared tenant."""
    kind = _RESUMABLE.get(journal.action)
    fence = observed.fleet.fence if observed.fleet is not None else None
    if observed.fleet is not None:  # moved with the fleet: resumed where it is now
        journal = observed.fleet.journals.get(journal.tenant, journal)
    if kind is not None and fence is not None:
        far = [p for p in (journal.source, journal.dest, journal.temp,
                           journal.details().get("retired_path")) if p and not fence.holds(p)]
        if far:
            return [_a(base, Kind.INVALID, detail=f"unfinished {journal.action} (phase "
                       f"{journal.phase}) refers to {far[0]}, outside the directories "
                       "tenants.yaml declares — not resumed, nothing touched; finish it in "
                       "the fleet this registry was copied from (or copy that fleet once it "
                       "has converged)")]
    if kind is None:
        return [_a(base, Kind.INVALID, detail=f"unfinished {journal.action!r} in the journal, "
                       "which this reconciler does not know — upgrade tenant-reconciler")]
    source = Path(journal.source) if journal.source else None
    version = row.schema_version if row is not None else None
    for p in (source, Path(journal.dest) if journal.dest else None):
        if p is not None and observed.file(p).usable:
            version = observed.file(p).user_version
            break
    resume = _a(base, kind, path=want, source=source,
                from_region=row.region if row is not None else None,
                from_version=version, to_version=version,
                status="archived" if kind is Kind.ARCHIVE else "active",
                detail=f"resume interrupted {journal.action} (phase {journal.phase})")
    if want is None or (kind is Kind.RESTORE and journal.dest != str(want)):
        return [resume]
    if version is not None and latest is not None and not 0 <= version <= latest:
        # the interrupted operation is finished (it only moves the file); the file is
        # then reported, never migrated
        return [resume, *_unknown(base, want, version, latest)]
    # the file ends up at ``want`` (a resumed relocation whose destination changed
    # meanwhile goes on there; a tenant declared again while it was being archived is
    # restored right after): what its version needs follows in this pass
    return _then_migrate(resume, version, target, row, retry_failed, base, observed.now)


def _restore(archive: Path, observed: Observed, catalog: Catalog, target: int,
             row: TenantRow | None, retry_failed: bool, base: Action) -> list[Action]:
    copy = observed.file(archive)
    if not copy.usable:
        return [_a(base, Kind.INVALID, source=archive, detail=f"newest archive {archive} "
                       f"{copy.error or 'is unreadable'} — not restored, nothing created; "
                       f"use `reconcile restore {base.tenant} --from FILE`")]
    assert copy.user_version is not None
    if not catalog.knows(copy.user_version):
        return _unknown(base, archive, copy.user_version, catalog.latest, source=archive,
                        note="not restored, nothing created")
    restore = _a(base, Kind.RESTORE, source=archive, from_version=copy.user_version,
                     to_version=copy.user_version, status="active",
                     detail=f"from {archive.name}")
    return _then_migrate(restore, copy.user_version, target, row, retry_failed, base,
                         observed.now)


def _unknown(base: Action, path: Path, version: int, latest: int, note: str = "",
             **changes: Any) -> list[Action]:
    """The report for a file at a version outside 0…latest: it never indexes the
    catalog, and nothing is done to the file or its registry row."""
    hint = unknown_version_hint(version, latest)
    return [_a(base, Kind.INVALID, detail=f"{path} {unknown_version(version, latest)} — "
                   f"{note or 'left untouched'}; {hint}", **changes)]


def _then_migrate(first: Action | None, version: int | None, target: int, row: TenantRow | None,
                  retry_failed: bool, base: Action, now: float) -> list[Action]:
    """``first`` (adopt/restore) followed by what the file's version needs."""
    out = [first] if first is not None else []
    if version is None:
        return out
    key = base.key
    if version < target:
        if (row is not None and row.status == "failed" and row.failed_key == key
                and not retry_failed and row.retry_at is not None and now < row.retry_at):
            out.append(_a(base, Kind.FAILED, from_version=version, to_version=target,
                              status="failed", detail=f"{row.failure or 'failed'} — retry "
                              "after backoff, or run with --retry-failed"))
            return out
        out.append(_a(base, Kind.MIGRATE, from_version=version, to_version=target,
                          status="active"))
    elif version > target:
        out.append(_a(base, Kind.DOWNGRADE, from_version=version, to_version=target,
                          detail=f"file is at v{version}, target is v{target} — refused; "
                          "migrations never run backwards"))
    elif row is not None and row.status == "migrating":
        # at its target, but the pass that migrated it died before its health gate:
        # migrate again (a no-op) so the gate runs before it counts as done
        out.append(_a(base, Kind.MIGRATE, from_version=version, to_version=target,
                          status="active", detail="health gate of an interrupted migration"))
    return out


def _plan_undeclared(desired: Desired, observed: Observed, notes: list[str],
                     reroots: list[Action]) -> list[Action]:
    out: list[Action] = []
    rerooted = observed.fleet.rerooted if observed.fleet is not None else {}
    settings = desired.settings
    archived = 0
    registered = observed.registry.tenants
    # a set difference in C, not a lookup per registered tenant: usually empty
    undeclared = sorted((name, registered[name])
                        for name in registered.keys() - desired.tenants.keys()
                        if registered[name].status != "archived")
    for name in sorted(rerooted):  # archived rows outside the fence: registry only
        row = registered[name]
        if row.status == "archived" and name not in desired.tenants:
            _reroot(row, rerooted[name], reroots)
    journal = observed.registry.journal
    unplaced = _unplaced(observed)
    for name, row in undeclared:
        if name in rerooted:
            row = _reroot(row, rerooted[name], reroots)
        path = Path(row.path)
        base = Action(Kind.ORPHANED, name, row.region, from_version=row.schema_version,
                      path=path, protected=row.protected)
        if name in journal:
            out.extend(_resume(journal[name], row, observed, None, 0, False, base))
            continue
        if name in unplaced:
            out.append(_a(base, Kind.INVALID, detail=_unplaced_detail(row)))
            continue
        found = observed.file(path)
        if name in desired.retired:  # acknowledged: not a problem, not routed, kept
            out.append(_a(base, Kind.RETIRED, status="orphaned",
                          detail="acknowledged under retired: — its file is kept"
                          + ("" if found.exists else f" (but {path} is gone)")
                          + ", not routed, never archived"))
            continue
        if not found.exists:
            out.append(_a(base, Kind.ORPHANED, status="orphaned", detail="not in tenants.yaml and "
                              f"its file {path} is gone"))
            continue
        reason = ""
        if not settings.prune:
            reason = "left alone (prune: false)"
        elif not desired.tenants:
            reason = "left alone (tenants.yaml declares no tenants: pruning disabled)"
        elif row.protected:
            reason = "left alone (protected)"
        elif row.status == "relocating" or name in observed.registry.journal:
            reason = "left alone (an operation on it is unfinished)"
        elif archived >= settings.prune_limit:
            reason = f"left alone (prune_limit {settings.prune_limit} reached this pass)"
            if not any("prune_limit" in n for n in notes):
                notes.append(f"prune_limit {settings.prune_limit} reached: further orphans are "
                             "archived on later passes")
        if reason:
            out.append(_a(base, Kind.ORPHANED, status="orphaned",
                              detail=f"not in tenants.yaml — {reason}"))
            continue
        archived += 1
        out.append(_a(base, Kind.ARCHIVE, status="archived", source=path,
                          detail="not in tenants.yaml — archived (prune: archive)"))
    for name in sorted(set(journal) - set(desired.tenants) - {n for n, _ in undeclared}):
        # e.g. a restore killed midway, then the tenant was undeclared again
        gone = observed.registry.tenants.get(name)
        out.extend(_resume(journal[name], gone, observed, None, 0, False,
                           Action(Kind.ORPHANED, name, gone.region if gone else None)))
    return out


def _registry_changes(desired: Desired, observed: Observed,
                      archiving: set[str]) -> list[RegistryChange]:
    reg = observed.registry
    out: list[RegistryChange] = []
    for key in sorted(set(desired.globals) | set(reg.settings)):
        new, old = desired.globals.get(key), reg.settings.get(key)
        if new != old:
            out.append(RegistryChange("settings", key, old, new))
    wanted = desired.domains()
    # an orphaned (undeclared, not archived) tenant keeps routing: it is left alone (only
    # a domain not wanted already can be one of its; a set difference finds them in C)
    for domain in reg.domains.keys() - wanted.keys():
        tenant = reg.domains[domain]
        if tenant in desired.tenants:
            continue
        row = reg.tenants.get(tenant)
        if row is not None and row.status != "archived" and tenant not in archiving \
                and tenant not in desired.retired:
            wanted.setdefault(domain, tenant)
    if wanted == reg.domains:  # the steady state: one comparison, no sort of every domain
        return out
    for domain in sorted(set(wanted) | set(reg.domains)):
        new, old = wanted.get(domain), reg.domains.get(domain)
        if new != old:
            out.append(RegistryChange("domains", domain, old, new))
    return out


def _reroot(row: TenantRow, home: str, reroots: list[Action]) -> TenantRow:
    """Add the ``reroot`` of ``row`` to ``home`` (where this fleet keeps its file, see
    fleet.py) to ``reroots``; returns the row as it will be once rerooted."""
    old = Path(row.path)
    new = Path(home)
    reroots.append(Action(Kind.REROOT, row.name, row.region, from_region=row.region,
                          from_version=row.schema_version, to_version=row.schema_version,
                          path=new, source=old, protected=row.protected,
                          detail=f"{old.parent} → {new.parent}"))
    return row._replace(path=home)


def _explained(actions: list[Action], outside: str, home: str) -> list[Action]:
    """A rerooted tenant with no file where this fleet keeps it: say where the registry
    pointed and what to do, instead of only "file is gone"."""
    return [_a(a, a.kind, detail=f"registered at v{a.from_version} at {outside}, outside "
               "this fleet's directories (not looked at), and no file at "
               f"{home} — not recreated; if this fleet's files are elsewhere, move them into "
               f"{Path(home).parent}, or `reconcile restore {a.tenant} --from FILE`")
            if a.kind is Kind.MISSING else a for a in actions]


def _unplaced(observed: Observed) -> tuple[str, ...]:
    return observed.fleet.unplaced if observed.fleet is not None else ()


def _unplaced_detail(row: TenantRow) -> str:
    return (f"registered at {row.path} in region {row.region}, which tenants.yaml no longer "
            "declares: outside this fleet's directories — not touched; declare the region "
            "again (where this fleet keeps its files)")


def _fleet_changes(observed: Observed) -> list[RegistryChange]:
    """The registry was copied or moved here: recorded as such (a copy gets a new id)."""
    fleet = observed.fleet
    if fleet is None or fleet.origin is None:
        return []
    return [RegistryChange("fleet", fleet.origin, fleet.recorded, fleet.central)]
