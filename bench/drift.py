"""Drift detection's cost on the no-op pass (issue 13, item 4).

Why: a daemon confirms "nothing changed" every interval; comparing schemas must not make
that noticeably slower. Ours is ``engine.preview`` with ``settings.drift: block`` (the
default) on a converged fleet whose files' schema keys the registry already remembers
(the unchanged case), and the same pass when the keys moved — 1% of the files, and every
file (right after a rollout, or on the first pass after upgrading). The baseline is the
same pass without drift detection: ``settings.drift: ignore`` on a copy of the registry
holding no remembered keys, i.e. the pass as it was before drift detection existed.

Changed keys are simulated by handing the planner a registry snapshot whose remembered
keys differ (the files themselves stay byte-identical, so every repetition measures the
same work): the pass then re-reads those files' schemas exactly as after a real change.
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from types import MappingProxyType

from bench import fleets
from bench.timing import Contender, Row, measure, median
from reconciler import engine, log
from reconciler.registry import Registry, Snapshot


def _with_settings(inputs: engine.Inputs, **changes: object) -> engine.Inputs:
    d = inputs.desired
    return dataclasses.replace(inputs, desired=dataclasses.replace(
        d, settings=dataclasses.replace(d.settings, **changes)))  # type: ignore[arg-type]


def _pass(inputs: engine.Inputs, keys: Callable[[Snapshot], Mapping[str, bytes]] | None
          ) -> None:
    """``engine.preview``, optionally with the remembered keys replaced."""
    with engine.collector_paused():
        snapshot = Registry.read(inputs.desired.settings.central, Registry.snapshot, None)
        assert snapshot is not None
        if keys is not None:
            snapshot = dataclasses.replace(snapshot, schema_keys=keys(snapshot))
        the_plan, observed = engine._plan_from(inputs, snapshot, False)
    if the_plan.changes or observed.drift:
        raise SystemExit("the drift bench's fleet is not converged or drifts: it would "
                         "measure the wrong thing")


def run(size: int, repeats: int, root: Path) -> list[Row]:
    per = f"{size // 1000}k" if size >= 1000 else str(size)
    fleet = fleets.get(fleets.FleetSpec(size), root)
    inputs = engine.load(fleet.config)
    # one real pass remembers every file's schema key (what a daemon's first pass does)
    engine.run_pass(inputs, log.configure("json", "error"))
    bare = fleet.root / "central-without-drift.db"
    fleets.checkpoint(fleet.central)
    shutil.copyfile(fleet.central, bare)
    conn = sqlite3.connect(bare)
    conn.execute("DELETE FROM schema_checks")
    conn.commit()
    conn.close()
    without = _with_settings(inputs, drift="ignore", central=bare)

    found = Registry.read(fleet.central, Registry.snapshot, None)
    assert found is not None
    remembered = dict(found.schema_keys)
    assert len(remembered) == size, f"{len(remembered)} keys remembered for {size} files"
    moved_some = MappingProxyType({p: (k if i % 100 else b"moved")
                                   for i, (p, k) in enumerate(sorted(remembered.items()))})
    moved_all: Mapping[str, bytes] = MappingProxyType({})

    t = measure([Contender("without", partial(_pass, without, None)),
                 Contender("unchanged", partial(_pass, inputs, None)),
                 Contender("changed 1%", partial(_pass, inputs, lambda s: moved_some)),
                 Contender("changed all", partial(_pass, inputs, lambda s: moved_all))],
                repeats)
    base = median(t["without"])
    rows = [Row(f"no-op pass + drift check, {per} tenants, unchanged", "engine.preview, "
                "drift: block, keys remembered", median(t["unchanged"]),
                "the same pass without drift detection", base, "≤ 1.1×" if size <= 10_000
                else "", 1.1 if size <= 10_000 else None,
                note=f"+{(median(t['unchanged']) - base) * 1e3:.1f} ms")]
    for label in ("changed 1%", "changed all"):
        rows.append(Row(f"no-op pass + drift check, {per} tenants, {label} of the files",
                        "engine.preview, drift: block, those files' schemas re-read",
                        median(t[label]), "the same pass without drift detection", base,
                        note=f"+{(median(t[label]) - base) * 1e3:.1f} ms"))
    return rows
