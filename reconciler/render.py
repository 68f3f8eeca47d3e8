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
from reconciler.plan import Action, Kind, Plan
from reconciler.revision import short

SYMBOLS = {
    Kind.CREATE: "+", Kind.ADOPT: "=", Kind.RESTORE: "<", Kind.RELOCATE: ">",
    Kind.MIGRATE: "~", Kind.ARCHIVE: "-", Kind.CORRECT: "*", Kind.MISSING: "!",
    Kind.ORPHANED: "?", Kind.DOWNGRADE: "!", Kind.SUSPENDED: " ", Kind.FAILED: "!",
    Kind.INVALID: "!", Kind.PENDING: "!",
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


def plan_lines(plan: Plan, config_name: str) -> list[str]:
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
    for wave_text in wave_lines(plan):
        lines.append(wave_text)
    for note in plan.notes:
        lines.append(f"  note: {note}")
    lines.append(plan_summary(plan))
    return lines


def wave_lines(plan: Plan) -> list[str]:
    if len(plan.waves) <= 1 and not plan.waves:
        return []
    out = [f"Rollout: {sum(len(w) for w in plan.waves)} tenants in {len(plan.waves)} wave(s)"]
    for i, wave in enumerate(plan.waves, start=1):
        label = "canary" if i == 1 and len(plan.waves) > 0 and _is_canary(plan) else f"wave {i}"
        names = ", ".join(wave[:8]) + (f", … (+{len(wave) - 8})" if len(wave) > 8 else "")
        out.append(f"  {label}: {names}")
    return out


def _is_canary(plan: Plan) -> bool:
    return len(plan.waves) > 1 or len(plan.waves[0]) < 2


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
    for o in result.outcomes:
        if o.outcome == "reported":
            continue
        versions = ""
        if o.from_version is not None or o.to_version is not None:
            versions = f" {_v(o.from_version)} → {_v(o.to_version)}".replace(" → ", " → ", 1)
        err = f": {o.error}" if o.error else ""
        lines.append(f"  {o.outcome:<8} {o.action:<9} {o.tenant}{versions}{err}")
    for a in result.plan.problems:
        lines.append(f"  {'problem':<8} {a.kind.value:<9} {a.tenant}: {a.detail}")
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
