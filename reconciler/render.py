"""Human and machine renderings of plans, results, status and history.

Why: the plan is what a pull-request reviewer reads (DESIGN §8), so its text form is
a contract of its own, like a diff; the JSON forms are what scripts parse. Nothing
here decides anything: it formats values computed elsewhere.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from reconciler.actions import Action, Kind, Plan, RegistryChange
from reconciler.apply import Result
from reconciler.context import Outcome
from reconciler.desired import Rollout
from reconciler.revision import short
from reconciler.wording import count, names, plural

SYMBOLS = {
    Kind.CREATE: "+", Kind.ADOPT: "=", Kind.RESTORE: "<", Kind.RELOCATE: ">",
    Kind.MIGRATE: "~", Kind.ARCHIVE: "-", Kind.CORRECT: "*", Kind.MISSING: "!",
    Kind.ORPHANED: "?", Kind.DOWNGRADE: "!", Kind.SUSPENDED: " ", Kind.FAILED: "!",
    Kind.INVALID: "!", Kind.PENDING: "!", Kind.REROOT: "*", Kind.SUSPEND: "|",
    Kind.UNSUSPEND: "^", Kind.RETIRED: " ", Kind.DRIFT: "!", Kind.DRIFT_WARN: "!",
    Kind.NO_BACKUP: "!",
    # a region agent's cross-host moves (issue 15)
    Kind.HANDOFF: ">", Kind.TAKEOVER: "<", Kind.RELEASE: "-", Kind.CANCEL: "^",
    Kind.ABANDON: "-", Kind.WAIT: " ",
}
LABELS = {Kind.DRIFT_WARN: "drift"}  # shown as drift too; the detail says "migrated anyway"


def _v(version: int | None) -> str:
    return "" if version is None else f"v{version}"


def _columns(a: Action) -> tuple[str, str, str]:
    """(region column, version column, tail)."""
    region = a.region or ""
    if a.kind is Kind.RELOCATE:
        return f"{a.from_region} → {a.region}", _v(a.from_version), a.detail if "resume" in \
            a.detail else ""
    if a.kind is Kind.CREATE:
        return region, "", f"→ {_v(a.to_version)}"
    if a.kind in (Kind.HANDOFF, Kind.TAKEOVER) and a.from_region:
        tail = a.detail.removeprefix(f"{a.from_region} → {a.region}").lstrip()
        return f"{a.from_region} → {a.region}", _v(a.from_version), tail
    if a.kind is Kind.MIGRATE:
        return region, _v(a.from_version), f"→ {_v(a.to_version)}"
    if a.kind in (Kind.ADOPT, Kind.RESTORE):
        return region, _v(a.from_version), a.detail
    return region, _v(a.from_version), a.detail


def plan_lines(plan: Plan, config_name: str, rollout: Rollout | None = None,
               verbose: bool = False) -> list[str]:
    """The plan as a reviewer reads it. Every action has a line, except that more than
    ``GROUP_AT`` actions of one kind are grouped (``~ migrate 9,812 tenants us v2 → v3 in
    394 waves (aaron … zed)``) unless ``verbose``; ``plan_json`` always lists each one."""
    lines = [f"Plan for {config_name} @ {short(plan.revision)} — "
             f"{plural(plan.tenant_count, 'tenant')}, target schema {plan.target}"]
    if not verbose and _groupable(plan):
        return [*lines, *_grouped_lines(plan, rollout)]
    rows: list[Row] = [*_fleet_rows(plan), *reroot_rows(plan)]
    rows.extend((SYMBOLS[a.kind], LABELS.get(a.kind, a.kind.value), a.tenant,
                 *_columns(a))
                for a in plan.actions if a.kind is not Kind.REROOT)
    rows.extend(_registry_row(c) for c in plan.registry if c.table != "fleet")
    lines.extend(_aligned(rows))
    lines.extend(_plan_tail(plan, rollout))
    return lines


Row = tuple[str, str, str, str, str, str]  # symbol, kind, name, region, version, tail


def _fleet_rows(plan: Plan) -> list[Row]:
    """``* fleet copied|moved registry OLD → NEW`` (see "Copied and moved fleets")."""
    return [("*", "fleet", c.key, "", "", f"registry {c.old} → {c.new}"
             + (" — a fleet of its own from now on (new fleet id); the original's files "
                "are never touched" if c.key == "copied" else ""))
            for c in plan.registry if c.table == "fleet"]


def _registry_row(c: RegistryChange) -> Row:
    sym = "+" if c.old is None else "-" if c.new is None else "~"
    if c.table == "domains":
        return (sym, "route", c.key, "", "", f"→ {c.new}" if c.new else
                f"(was {c.old}) removed")
    return (sym, "setting", c.key, "", "", f"= {c.new!r}" if c.new is not None else "removed")


def _aligned(rows: Sequence[Row]) -> list[str]:
    if not rows:
        return []
    w_name = max(len(r[2]) for r in rows)
    w_region = max(len(r[3]) for r in rows)
    w_ver = max((len(r[4]) for r in rows), default=0)
    return [f"  {sym} {kind:<9} {name:<{w_name}}  {region:<{w_region}}  {ver:<{w_ver}}  "
            f"{tail}".rstrip() for sym, kind, name, region, ver, tail in rows]


GROUP_AT = 20  # more actions of one kind than this are grouped in the text plan


def _groupable(plan: Plan) -> bool:
    by_kind = Counter(a.kind for a in plan.actions)
    by_table = Counter(c.table for c in plan.registry)
    return any(n > GROUP_AT for n in (*by_kind.values(), *by_table.values()))


def _grouped_lines(plan: Plan, rollout: Rollout | None) -> list[str]:
    """Actions of a kind with more than ``GROUP_AT`` members become one line per
    (kind, region, version, target); smaller kinds keep one line per tenant."""
    big = {k for k, n in Counter(a.kind for a in plan.actions).items() if n > GROUP_AT}
    groups: dict[tuple[Kind, str, str, str], list[str]] = {}
    slot: dict[tuple[Kind, str, str, str], int] = {}  # a group sits where its first member was
    rows: list[Row] = [*_fleet_rows(plan), *reroot_rows(plan)]
    for a in plan.actions:
        if a.kind is Kind.REROOT:
            continue
        region, ver, tail = _columns(a)
        if a.kind not in big:
            rows.append((SYMBOLS[a.kind], LABELS.get(a.kind, a.kind.value), a.tenant,
                         region, ver, tail))
            continue
        key: tuple[Kind, str, str, str] = (
            a.kind, region, ver, tail if a.kind in (Kind.CREATE, Kind.MIGRATE) else "")
        if key not in groups:
            groups[key], slot[key] = [], len(rows)
            rows.append(("", "", "", "", "", ""))
        groups[key].append(a.tenant)
    wave_of = {name: i for i, w in enumerate(plan.waves) for name in w}
    for key, tenants in groups.items():
        kind, region, ver, tail = key
        in_waves = {wave_of[t] for t in tenants if t in wave_of}
        if in_waves and kind in (Kind.MIGRATE, Kind.PENDING):
            tail += f" in {plural(len(in_waves), 'wave')}"
        rows[slot[key]] = (SYMBOLS[kind], kind.value, plural(len(tenants), "tenant"), region,
                           ver, f"{tail} ({_span(tenants)})".lstrip())
    big_tables = {t for t, n in Counter(c.table for c in plan.registry).items() if n > GROUP_AT}
    registry_groups: dict[tuple[str, str], list[str]] = {}
    for c in plan.registry:
        if c.table == "fleet":
            continue
        row = _registry_row(c)
        if c.table in big_tables:
            registry_groups.setdefault((row[0], row[1]), []).append(c.key)
        else:
            rows.append(row)
    for (sym, label), keys in registry_groups.items():
        what = {"+": "added", "-": "removed", "~": "changed"}[sym]
        noun = plural(len(keys), "domain" if label == "route" else "setting")
        rows.append((sym, label, noun, "", "", f"{what} ({_span(keys)})"))
    after = _plan_tail(plan, rollout)  # waves, halts, notes, then the summary line
    return [*_aligned(rows), *after[:-1],
            "  (large sets grouped: --verbose lists every tenant, --json lists them all)",
            after[-1]]


def _span(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{items[0]} … {items[-1]}"


def _plan_tail(plan: Plan, rollout: Rollout | None) -> list[str]:
    lines = wave_lines(plan, rollout)
    lines.extend(halted_lines(plan))
    for note in plan.notes:
        lines.append(f"  note: {note}")
    lines.append(plan_summary(plan))
    return lines


MAX_WAVE_LINES = 12  # a 10k-tenant plan shows its first waves, not 400 lines of them


def wave_lines(plan: Plan, rollout: Rollout | None = None) -> list[str]:
    """The rollout as the next pass would run it: waves in order, the canary first."""
    if not plan.waves:
        return []
    head = f"Rollout: {plural(sum(len(w) for w in plan.waves), 'tenant')} in " \
        f"{plural(len(plan.waves), 'wave')}"
    if rollout is not None:
        head += (f" — canary {rollout.canary}, batch {rollout.batch}, up to {rollout.parallel} "
                 f"at once, halts after more than {plural(rollout.max_failures, 'failure')}"
                 f"{', snapshot before each' if rollout.snapshot else ''}")
    out = [head]
    canary = rollout.canary > 0 if rollout is not None else False
    shown = plan.waves if len(plan.waves) <= MAX_WAVE_LINES else plan.waves[:MAX_WAVE_LINES - 1]
    for i, wave in enumerate(shown, start=1):
        label = f"wave {i}" + (" (canary)" if i == 1 and canary else "")
        out.append(f"  {label:<16} {len(wave):>4}  {names(wave)}")
    if len(shown) < len(plan.waves):
        rest = plan.waves[len(shown):]
        out.append(f"  … {plural(len(rest), 'more wave')}, "
                   f"{plural(sum(len(w) for w in rest), 'tenant')} ({rest[0][0]} … {rest[-1][-1]})")
    return out


def halted_lines(plan: Plan) -> list[str]:
    pending = [a.tenant for a in plan.actions if a.kind is Kind.PENDING]
    if not pending:
        return []
    failed = [a.tenant for a in plan.actions if a.kind is Kind.FAILED]
    return [f"Rollout halted: {len(pending)} pending ({names(pending)}), {len(failed)} failed"
            + (f" ({names(failed)})" if failed else "")
            + " — fix the failed tenants or the migration, then `reconcile apply "
            "--retry-failed` (editing tenants.yaml or the migrations also resumes it)"]


def reroot_rows(plan: Plan) -> list[tuple[str, str, str, str, str, str]]:
    """Reroots grouped by region and directory: ``* reroot eu: /old/eu → /new/eu (40
    tenants)`` — one line per moved directory, not one per tenant (``--json`` lists them
    all)."""
    groups: dict[tuple[str, str, str, str], list[str]] = {}
    for a in plan.actions:
        if a.kind is Kind.REROOT and a.source is not None and a.path is not None:
            key = (a.from_region or "", a.region or "", str(a.source.parent), str(a.path.parent))
            groups.setdefault(key, []).append(a.tenant)
    out = []
    for (old_region, region, old, new), members in groups.items():
        where = region if old_region == region else f"{old_region} → {region}"
        who = (members[0] if len(members) == 1
               else f"{plural(len(members), 'tenant')}: {names(members)}")
        out.append(("*", "reroot", f"{where}:", "", "", f"{old} → {new} ({who})"))
    return out


def plan_summary(plan: Plan) -> str:
    waiting = plan.count(Kind.WAIT)  # a region agent's (issue 15): neither change nor problem
    if plan.is_empty and not plan.problems:
        return "No changes: the fleet matches the desired state." if not waiting else \
            f"No changes now; {count(waiting)} waiting (see the wait lines)."
    parts = [f"{count(plan.count(Kind.CREATE))} to create",
             f"{count(plan.count(Kind.MIGRATE))} to migrate",
             f"{count(plan.count(Kind.RELOCATE))} to relocate",
             f"{count(plan.count(Kind.ARCHIVE))} to archive"]
    for kind, label in ((Kind.ADOPT, "to adopt"), (Kind.RESTORE, "to restore"),
                        (Kind.REROOT, "to reroot"), (Kind.SUSPEND, "to suspend"),
                        (Kind.UNSUSPEND, "to unsuspend"), (Kind.HANDOFF, "to hand off"),
                        (Kind.TAKEOVER, "to take over"), (Kind.RELEASE, "to release"),
                        (Kind.CANCEL, "handoff to cancel"),
                        (Kind.ABANDON, "takeover to abandon"), (Kind.WAIT, "waiting")):
        if plan.count(kind):
            parts.append(f"{count(plan.count(kind))} {label}")
    if plan.count(Kind.CORRECT):
        parts.append(plural(plan.count(Kind.CORRECT), "registry correction"))
    fleet = [c for c in plan.registry if c.table == "fleet"]
    if fleet:
        parts.append(f"fleet registry {fleet[0].key}")
    if len(plan.registry) > len(fleet):
        parts.append(plural(len(plan.registry) - len(fleet), "routing/settings update"))
    return f"Plan: {', '.join(parts)}; {plural(len(plan.problems), 'problem')}."


def action_json(a: Action) -> dict[str, Any]:
    return {"action": a.kind.value, "tenant": a.tenant, "region": a.region,
            "from_region": a.from_region, "from_version": a.from_version,
            "to_version": a.to_version, "path": str(a.path) if a.path else None,
            "source": str(a.source) if a.source else None, "detail": a.detail,
            "change": a.is_change, "problem": a.is_problem} | (
                {"drift": [d.as_json() for d in a.drift]} if a.drift else {})


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "revision": plan.revision,
        "target": plan.target,
        "tenants": plan.tenant_count,
        "actions": [action_json(a) for a in plan.actions],
        "registry": [{"table": c.table, "key": c.key, "old": c.old, "new": c.new}
                     for c in plan.registry],
        "waves": [list(w) for w in plan.waves],
        "notes": list(plan.notes),
        "changes": len(plan.changes) + len(plan.registry),
        "problems": len(plan.problems),
    }


def result_lines(result: Result, summary: str) -> list[str]:
    """Every outcome, one line each, then what needs a person, then ``summary``: what a
    pipe or a log gets (and ``--verbose`` on a terminal; see ``compact``)."""
    where = regions_of(result.plan)
    lines = [outcome_line(o, where) for o in result.outcomes
             if o.outcome not in ("reported", "pending")]  # pending: one line below
    lines.extend(attention_lines(result))
    lines.append(summary)
    return lines


def regions_of(plan: Plan) -> dict[str, str]:
    """Tenant → the region words its result line shows (``eu``, or ``eu → us`` for a
    relocation)."""
    out: dict[str, str] = {}
    for a in plan.actions:
        if a.kind is Kind.RELOCATE and a.from_region:
            out[a.tenant] = f"{a.from_region} → {a.region}"
        elif a.region:
            out.setdefault(a.tenant, a.region)
    return out


def outcome_line(o: Outcome, where: dict[str, str]) -> str:
    """E.g. ``  ok       relocate  globex eu → us v3`` or ``  failed   migrate   acme us
    v1 → v2: <error>``."""
    versions = ""
    if o.from_version is not None or o.to_version is not None:
        versions = (f" {_v(o.to_version)}" if o.from_version == o.to_version else
                    f" {_v(o.from_version)} → {_v(o.to_version)}")
    region = f" {where[o.tenant]}" if o.tenant in where else ""
    err = f": {o.error}" if o.error else ""
    return f"  {o.outcome:<8} {o.action:<9} {o.tenant}{region}{versions}{err}"


def attention_lines(result: Result, per_kind: int | None = None) -> list[str]:
    """The plan's problems (at most ``per_kind`` of each kind, then a count), the
    tenants a halted rollout left pending (one line), and the halt itself."""
    lines: list[str] = []
    shown: Counter[Kind] = Counter()
    where = regions_of(result.plan)
    for a in result.plan.problems:
        if a.kind is Kind.PENDING:
            continue  # from the outcomes below: one line for all of them
        shown[a.kind] += 1
        if per_kind is None or shown[a.kind] <= per_kind:
            region = f" {where[a.tenant]}" if a.tenant in where else ""
            lines.append(f"  {'problem':<8} {a.kind.value:<9} {a.tenant}{region}: {a.detail}")
    for kind, n in shown.items():
        if per_kind is not None and n > per_kind:
            lines.append(f"  {'problem':<8} {kind.value:<9} … {plural(n - per_kind, 'more tenant')}"
                         " (`reconcile status` lists them all)")
    for a in result.plan.actions:
        if a.kind is Kind.DRIFT_WARN:
            lines.append(f"  {'warning':<8} {'drift':<9} {a.tenant} {_v(a.from_version)}: "
                         f"{a.detail}")
    pending = [o.tenant for o in result.outcomes if o.outcome == "pending"]
    if pending:
        lines.append(f"  {'pending':<8} {'migrate':<9} {plural(len(pending), 'tenant')} "
                     f"{'stays' if len(pending) == 1 else 'stay'} at their version: "
                     f"{names(pending)}")
    if result.halted:
        lines.append("  rollout halted: failures exceeded rollout.max_failures; remaining "
                     "tenants stay at their version (pending) — fix and re-run, or "
                     "`reconcile apply --retry-failed`")
    return lines


def history_lines(events: Sequence[dict[str, Any]]) -> list[str]:
    """``reconcile history``: one row per event, newest first, its detail in words, and
    the agent that recorded it (``eu@host-eu``; ``-`` for events older than issue 15)."""
    return table(
        ("ID", "AT", "REVISION", "TENANT", "ACTION", "OUTCOME", "MS", "AGENT", "DETAIL"),
        ((e["id"], e["at"], short(e["revision"] or ""), e["tenant"] or "-", e["action"],
          e["outcome"], e["duration_ms"] if e["duration_ms"] is not None else "",
          e.get("agent") or "-", event_detail(e)) for e in events))


def event_detail(e: dict[str, Any]) -> str:
    """E.g. ``eu → us; v3`` for a relocation, ``eu; v0 → v3`` for a create, a wave's
    tally for a rollout's summary event, then any error, reason, domain or key."""
    d = e["detail"]
    parts = []
    if d.get("from_region") and d.get("region") and d["from_region"] != d["region"]:
        parts.append(f"{d['from_region']} → {d['region']}")
    elif d.get("region"):
        parts.append(str(d["region"]))
    if "from_version" in d or "to_version" in d:
        start, end = d.get("from_version", "?"), d.get("to_version", "?")
        parts.append(f"v{end}" if start == end else f"v{start} → v{end}")
    if e["action"] == "wave":  # a rollout's summary event
        which = f"wave {d['wave']}/{d['waves']}" if "wave" in d else \
            f"busy retry {d.get('retry')}"
        parts.append(f"{which}: {plural(len(d.get('tenants', [])), 'tenant')}, "
                     f"{count(d.get('failed', 0))} failed ({count(d.get('failures', 0))} in "
                     f"the rollout)" + (" — halted" if d.get("halted") else ""))
    for key in ("error", "reason", "domain", "key"):
        if key in d:
            parts.append(f"{key}: {d[key]}")
    return "; ".join(parts)


def drift_status_lines(drifted: Sequence[str], counts: Sequence[Any], checked: bool,
                       per_version: bool) -> list[str]:
    """``status``'s schema lines: the drifted count, and with ``--schema`` one line per
    version (``status.VersionCount``): tenants there and how many match the reference."""
    out: list[str] = []
    if not checked:
        out.append("schema: not compared (settings.drift: ignore)")
    elif drifted:
        out.append(f"drifted: {len(drifted)} ({names(drifted)}) — `reconcile drift` shows "
                   "how")
    if per_version and checked:
        for c in counts:
            out.append(f"schema v{c.version}: {c.matching}/{c.tenants} match the reference"
                       + (f"; drifted: {names(c.drifted)}" if c.drifted else ""))
    return out


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [list(map(str, r)) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def backup_cell(txid: int | None, lag: float | None) -> str:
    """``status``'s BACKUP column: Litestream's txid and the lag, or ``-``."""
    if lag is None:
        return "-" if txid is None else "none"
    return f"tx {txid} · lag {lag:.1f}s"
