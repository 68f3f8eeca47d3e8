"""Compact renderings for large fleets: the numbers first, then only what needs a person.

Why: at 400 tenants, one line per tenant is 400 lines nobody reads, and the one failed
tenant scrolls out of sight. A person at a terminal wants the counts and the exceptions;
``--verbose`` (or ``--json``, or any output that is not a terminal) still gives every
line, so logs and scripts lose nothing.

Thresholds (documented in the README, "Output on a terminal"):

* ``LIST_MAX``: an apply on a terminal lists each action only when it took at most this
  many; beyond, it prints counts by outcome. Failures are always listed.
* ``PER_KIND_MAX``: at most this many problems of one kind are listed after an apply on
  a terminal, then a count (``reconcile status`` lists them all).
* ``reconcile status`` always opens with the numbers and lists only the tenants that need
  a person (``--all``: every tenant).

Nothing here decides anything: it formats values computed by ``engine`` and ``status``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from reconciler import render
from reconciler.apply import Result
from reconciler.context import FAILED, RETRY, SKIPPED
from reconciler.status import FleetCounts, StatusRow
from reconciler.terminal import PLAIN, Style
from reconciler.wording import count, names, plural

LIST_MAX = 20
PER_KIND_MAX = 10

_DONE = {"create": "created", "adopt": "adopted", "restore": "restored",
         "relocate": "relocated", "migrate": "migrated", "archive": "archived",
         "correct": "corrected"}
_NOT_DONE = {FAILED: "failed", RETRY: "to retry (busy)", SKIPPED: "skipped"}


class HostScope(NamedTuple):
    """A region agent's host (issue 15): the tenants and regions tenants.yaml declares
    in all, and the one region this host holds."""

    tenants: int
    regions: int
    region: str


def result_lines(result: Result, summary: str) -> list[str]:
    """An apply's result for a terminal: each action when it did at most ``LIST_MAX``,
    else ``Applied: 398 created, 1 failed, 1 skipped`` and only the failures; then the
    problems and halts (at most ``PER_KIND_MAX`` of a kind), then ``summary``."""
    done = [o for o in result.outcomes if o.outcome not in ("reported", "pending")]
    where = render.regions_of(result.plan)
    if len(done) <= LIST_MAX:
        lines = [render.outcome_line(o, where) for o in done]
    else:
        lines = [outcome_counts(result)]
        failed = [o for o in done if o.outcome == FAILED]
        lines.extend(render.outcome_line(o, where) for o in failed[:PER_KIND_MAX])
        if len(failed) > PER_KIND_MAX:
            lines.append(f"  {'failed':<8} … {plural(len(failed) - PER_KIND_MAX, 'more tenant')}"
                         " (`reconcile status` lists them all)")
    lines.extend(render.attention_lines(result, per_kind=PER_KIND_MAX))
    lines.append(summary)
    return lines


def outcome_counts(result: Result) -> str:
    """``Applied: 398 created, 2 migrated, 1 failed, 1 skipped`` (actions that finished,
    by action; the others by outcome), or ``Applied: nothing`` for a no-op pass."""
    ok: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for o in result.outcomes:
        if o.outcome == "ok":
            ok[o.action] += 1
        elif o.outcome in _NOT_DONE:
            other[o.outcome] += 1
    parts = [f"{count(n)} {_DONE.get(action, action + ' done')}" for action, n in ok.items()]
    parts += [f"{count(other[k])} {label}" for k, label in _NOT_DONE.items() if other[k]]
    return f"Applied: {', '.join(parts) or 'nothing'}"


def status_lines(fleet: FleetCounts, rows: Sequence[StatusRow], *, target: int,
                 show_all: bool, style: Style = PLAIN, here: HostScope | None = None
                 ) -> list[str]:
    """``reconcile status``: the fleet in numbers, then the tenants that need a person
    and what the next pass will change (``show_all``: a table of every tenant).
    ``here``: on a region agent's host (issue 15), what tenants.yaml declares in all
    and which region this host holds (``fleet`` and ``rows`` are that region's)."""
    held = f"{plural(fleet.total, 'tenant')} in {plural(len(fleet.by_region), 'region')}"
    if here is not None:
        held = f"{plural(here.tenants, 'tenant')} in {plural(here.regions, 'region')}; " \
            f"this host ({here.region}): {plural(fleet.total, 'tenant')}"
    lines = [f"Fleet: {held}, target schema v{target}"]
    lines.extend("  " + line for line in _version_table(fleet))
    lines.append("  " + " · ".join(_painted_count(label, n, style) for label, n in fleet.counts
                                   if n or label != "waiting"))  # only region agents wait
    if show_all:
        lines.extend(_every_row(rows, style))
        return lines
    attention = [r for r in rows if r.needs_person]
    if attention:
        lines.append(f"Needs a person ({count(len(attention))}):")
        lines.extend("  " + (style.paint(line, "red") if i else line) for i, line in enumerate(
            render.table(("TENANT", "REGION", "VERSION", "STATUS", "PROBLEM"),
                         ((r.tenant, r.region, _ver(r.version), r.status, r.problem)
                          for r in attention))))
    changing = [r for r in rows if r.changing and not r.needs_person]
    if changing:
        by_kind: dict[str, list[str]] = {}
        for r in changing:
            for kind in r.kinds:
                by_kind.setdefault(kind, []).append(r.tenant)
        lines.append("Next pass: " + ", ".join(
            f"{count(len(ts))} to {kind} ({names(ts, 4)})" if kind != "pending" else
            f"{count(len(ts))} pending a halted rollout ({names(ts, 4)})"
            for kind, ts in by_kind.items()) + " — `reconcile --dry-run` shows the plan")
    waiting = [r for r in rows if "wait" in r.kinds]
    if waiting:  # a region agent's (issue 15): e.g. another region's hand-off or view
        lines.append(f"Waiting ({count(len(waiting))}): "
                     f"{names([r.tenant for r in waiting], 4)} — `reconcile plan` says why")
    if not attention and not changing and not waiting:
        lines.append(style.paint("Every tenant is in sync.", "green"))
    else:
        lines.append("(`reconcile status --all` lists every tenant)")
    return lines


def _ver(v: int | None) -> str:
    return "-" if v is None else f"v{v}"


def _version_table(fleet: FleetCounts) -> list[str]:
    heads = ["REGION", "TENANTS", *(_ver(v) if v is not None else "no file"
                                    for v in fleet.versions)]
    body = [(region, count(sum(n for _, n in per)), *(count(n) if n else "-" for _, n in per))
            for region, per in fleet.by_region]
    if len(fleet.by_region) > 1:
        totals = [sum(per[i][1] for _, per in fleet.by_region) for i in range(len(fleet.versions))]
        body.append(("all", count(fleet.total), *(count(n) if n else "-" for n in totals)))
    return _right_aligned(heads, body)


def _right_aligned(heads: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """The first column left-aligned, the numbers right-aligned."""
    widths = [max(len(str(r[i])) for r in [heads, *body]) for i in range(len(heads))]
    out = []
    for r in [heads, *body]:
        cells = [f"{r[0]:<{widths[0]}}", *(f"{c:>{w}}" for c, w in zip(r[1:], widths[1:],
                                                                         strict=True))]
        out.append("  ".join(cells).rstrip())
    return out


_BAD = frozenset(("failed", "missing", "orphaned"))


def _painted_count(label: str, n: int, style: Style) -> str:
    text = f"{label} {count(n)}"
    if label in _BAD and n:
        return style.paint(text, "red")
    if label == "in sync":
        return style.paint(text, "green")
    return text


def _every_row(rows: Sequence[StatusRow], style: Style) -> list[str]:
    table = render.table(
        ("TENANT", "WANT", "REGION", "VERSION", "STATUS", "PENDING"),
        ((r.tenant, f"{r.want_region} {_ver(r.want_version)}", r.region, _ver(r.version),
          r.status, r.pending or "in sync") for r in rows))
    return ["  " + table[0], *("  " + (style.paint(line, "red") if r.needs_person else
                                       style.paint(line, "yellow") if not r.in_sync else line)
                                for line, r in zip(table[1:], rows, strict=True))]
