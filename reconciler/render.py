"""Human and machine renderings of plans, results, status and history.

Why: the plan is what a pull-request reviewer reads (DESIGN §8), so its text form is
a contract of its own, like a diff; the JSON forms are what scripts parse. Nothing
here decides anything: it formats values computed elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from reconciler.apply import Result
from reconciler.desired import Rollout
from reconciler.plan import Action, Kind, Plan
from reconciler.revision import short

SYMBOLS = {
    Kind.CREATE: "+", Kind.ADOPT: "=", Kind.RESTORE: "<", Kind.RELOCATE: ">",
    Kind.MIGRATE: "~", Kind.ARCHIVE: "-", Kind.CORRECT: "*", Kind.MISSING: "!",
    Kind.ORPHANED: "?", Kind.DOWNGRADE: "!", Kind.SUSPENDED: " ", Kind.FAILED: "!",
    Kind.INVALID: "!", Kind.PENDING: "!", Kind.NO_BACKUP: "!",
}


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
    if a.kind is Kind.MIGRATE:
        return region, _v(a.from_version), f"→ {_v(a.to_version)}"
    if a.kind in (Kind.ADOPT, Kind.RESTORE):
        return region, _v(a.from_version), a.detail
    return region, _v(a.from_version), a.detail


def plan_lines(plan: Plan, config_name: str, rollout: Rollout | None = None) -> list[str]:
    lines = [f"Plan for {config_name} @ {short(plan.revision)} — {plan.tenant_count} tenants, "
             f"target schema {plan.target}"]
    rows = [(SYMBOLS[a.kind], a.kind.value, a.tenant, *_columns(a)) for a in plan.actions]
    for c in plan.registry:
        sym = "+" if c.old is None else "-" if c.new is None else "~"
        if c.table == "domains":
            rows.append((sym, "route", c.key, "", "", f"→ {c.new}" if c.new else
                         f"(was {c.old}) removed"))
        else:
            rows.append((sym, "setting", c.key, "", "", f"= {c.new!r}" if c.new is not None
                         else "removed"))
    if rows:
        w_name = max(len(r[2]) for r in rows)
        w_region = max(len(r[3]) for r in rows)
        w_ver = max((len(r[4]) for r in rows), default=0)
        for sym, kind, name, region, ver, tail in rows:
            line = (f"  {sym} {kind:<9} {name:<{w_name}}  {region:<{w_region}}  "
                    f"{ver:<{w_ver}}  {tail}")
            lines.append(line.rstrip())
    lines.extend(wave_lines(plan, rollout))
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
    count = sum(len(w) for w in plan.waves)
    head = f"Rollout: {count} tenant{'s' if count != 1 else ''} in {len(plan.waves)} wave" \
        f"{'s' if len(plan.waves) != 1 else ''}"
    if rollout is not None:
        head += (f" — canary {rollout.canary}, batch {rollout.batch}, up to {rollout.parallel} "
                 f"at once, halts after more than {rollout.max_failures} failure"
                 f"{'s' if rollout.max_failures != 1 else ''}"
                 f"{', snapshot before each' if rollout.snapshot else ''}")
    out = [head]
    canary = rollout.canary > 0 if rollout is not None else False
    shown = plan.waves if len(plan.waves) <= MAX_WAVE_LINES else plan.waves[:MAX_WAVE_LINES - 1]
    for i, wave in enumerate(shown, start=1):
        label = f"wave {i}" + (" (canary)" if i == 1 and canary else "")
        out.append(f"  {label:<16} {len(wave):>4}  {_names(wave)}")
    if len(shown) < len(plan.waves):
        rest = plan.waves[len(shown):]
        out.append(f"  … {len(rest)} more waves, {sum(len(w) for w in rest)} tenants "
                   f"({rest[0][0]} … {rest[-1][-1]})")
    return out


def _names(names: Sequence[str], limit: int = 6) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit - 1]) + f", … {names[-1]}"


def halted_lines(plan: Plan) -> list[str]:
    pending = [a.tenant for a in plan.actions if a.kind is Kind.PENDING]
    if not pending:
        return []
    failed = [a.tenant for a in plan.actions if a.kind is Kind.FAILED]
    return [f"Rollout halted: {len(pending)} pending ({_names(pending)}), {len(failed)} failed"
            + (f" ({_names(failed)})" if failed else "")
            + " — fix the failed tenants or the migration, then `reconcile apply "
            "--retry-failed` (editing tenants.yaml or the migrations also resumes it)"]


def plan_summary(plan: Plan) -> str:
    if plan.is_empty and not plan.problems:
        return "No changes: the fleet matches the desired state."
    parts = [f"{plan.count(Kind.CREATE)} to create", f"{plan.count(Kind.MIGRATE)} to migrate",
             f"{plan.count(Kind.RELOCATE)} to relocate", f"{plan.count(Kind.ARCHIVE)} to archive"]
    for kind, label in ((Kind.ADOPT, "to adopt"), (Kind.RESTORE, "to restore"),
                        (Kind.CORRECT, "registry corrections")):
        if plan.count(kind):
            parts.append(f"{plan.count(kind)} {label}")
    if plan.registry:
        parts.append(f"{len(plan.registry)} routing/settings updates")
    problems = len(plan.problems)
    return f"Plan: {', '.join(parts)}; {problems} problem{'s' if problems != 1 else ''}."


def action_json(a: Action) -> dict[str, Any]:
    return {"action": a.kind.value, "tenant": a.tenant, "region": a.region,
            "from_region": a.from_region, "from_version": a.from_version,
            "to_version": a.to_version, "path": str(a.path) if a.path else None,
            "source": str(a.source) if a.source else None, "detail": a.detail,
            "change": a.is_change, "problem": a.is_problem}


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
    lines: list[str] = []
    pending = [o.tenant for o in result.outcomes if o.outcome == "pending"]
    for o in result.outcomes:
        if o.outcome == "reported" or o.outcome == "pending":
            continue  # pending tenants get one line below, not one each
        versions = ""
        if o.from_version is not None or o.to_version is not None:
            versions = f" {_v(o.from_version)} → {_v(o.to_version)}".replace(" → ", " → ", 1)
        err = f": {o.error}" if o.error else ""
        lines.append(f"  {o.outcome:<8} {o.action:<9} {o.tenant}{versions}{err}")
    for a in result.plan.problems:
        lines.append(f"  {'problem':<8} {a.kind.value:<9} {a.tenant}: {a.detail}")
    if pending:
        lines.append(f"  {'pending':<8} {'migrate':<9} {len(pending)} tenant"
                     f"{'s' if len(pending) != 1 else ''} stay at their version: "
                     f"{_names(pending)}")
    if result.halted:
        lines.append("  rollout halted: failures exceeded rollout.max_failures; remaining "
                     "tenants stay at their version (pending) — fix and re-run, or "
                     "`reconcile apply --retry-failed`")
    lines.append(summary)
    return lines


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
