"""The no-op pass: how close confirming "nothing changed" comes to the physical floor.

Why: a daemon spends nearly all its life here. The floor is what any tool must do to
know every tenant's version: ``os.stat`` plus reading the 4 header bytes at offset 60
of every file. Ours is ``engine.preview`` (registry snapshot + observe + plan) with the
desired state already loaded, as the daemon holds it; and the whole ``reconcile
--dry-run`` process (start-up, YAML, catalog, revision) against the floor run as a
process of its own.

On a WAL fleet whose ``-wal`` files are present (applications hold the files open)
the header may lag the WAL, so the only correct answer comes from SQLite: there the
baseline is a bare ``connect`` + ``PRAGMA user_version`` + ``close`` loop.

Every command first loads the desired state: what ``engine.load``'s read of the
registry's agent row adds to that is measured beside it (``bench.load``).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

from bench import fleets
from bench import load as load_bench
from bench.holder import Holders
from bench.timing import Contender, Row, measure, median
from reconciler import engine

RECONCILE = str(Path(sys.executable).with_name("reconcile"))

FLOOR_SCRIPT = """
import os, sys
paths = open(sys.argv[1]).read().split()
for p in paths:
    os.stat(p)
    fd = os.open(p, os.O_RDONLY)
    os.pread(fd, 4, 60)
    os.close(fd)
"""


def floor(paths: tuple[str, ...]) -> int:
    total = 0
    for p in paths:
        os.stat(p)
        fd = os.open(p, os.O_RDONLY)
        try:
            total += int.from_bytes(os.pread(fd, 4, 60), "big")
        finally:
            os.close(fd)
    return total


def pragma_loop(paths: tuple[str, ...]) -> int:
    total = 0
    for p in paths:
        conn = sqlite3.connect(p)
        try:
            total += conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    return total


def _preview(inputs: engine.Inputs) -> None:
    the_plan, _ = engine.preview(inputs)
    if not the_plan.is_empty:
        raise SystemExit(f"no-op pass planned {len(the_plan.actions)} actions on a converged "
                         "fleet: the benchmark would measure the wrong thing")


def _cli(config: Path) -> None:
    r = subprocess.run([RECONCILE, "--dry-run", "-c", str(config)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"reconcile --dry-run exited {r.returncode}: {r.stderr[-2000:]}")


def profile(inputs: engine.Inputs, runs: int = 3) -> None:
    """Print where ``engine.preview`` spends its time (pyinstrument, a bench-only extra)."""
    from pyinstrument import Profiler  # type: ignore[import-not-found,unused-ignore]

    profiler = Profiler(interval=0.0005)
    profiler.start()
    for _ in range(runs):
        engine.preview(inputs)
    profiler.stop()
    print(profiler.output_text(unicode=True, color=False))


def per_tenant(seconds: float, size: int) -> str:
    return f"{seconds / size * 1e6:.1f} µs per tenant"


def run(size: int, repeats: int, root: Path, cli: bool = True, wal_held_max: int = 10_000,
        profiled: bool = False) -> list[Row]:
    rows: list[Row] = []
    per = f"{size // 1000}k" if size >= 1000 else str(size)
    for mode in ("delete", "wal"):
        fleet = fleets.get(fleets.FleetSpec(size, mode=mode), root)
        inputs = engine.load(fleet.config)
        label = "rollback-journal" if mode == "delete" else "WAL, idle (no -wal)"
        t = measure([Contender("ours", partial(_preview, inputs)),
                     Contender("floor", partial(floor, fleet.paths))], repeats)
        rows.append(Row(f"no-op pass, {per} tenants, {label}", "engine.preview (observe+plan)",
                        median(t["ours"]), "floor: stat + 4 header bytes", median(t["floor"]),
                        "≤ 3×", 3.0, note=f"ours {per_tenant(median(t['ours']), size)}, "
                        f"floor {per_tenant(median(t['floor']), size)}"))
        if profiled and mode == "delete":
            profile(inputs)
        if mode == "delete":  # what every command's load adds: the agent-row read
            rows.extend(load_bench.run(fleet, per, repeats))
        if cli and mode == "delete":
            with tempfile.NamedTemporaryFile("w", suffix=".txt") as listfile:
                listfile.write("\n".join(fleet.paths))
                listfile.flush()
                cmd = [sys.executable, "-c", FLOOR_SCRIPT, listfile.name]
                t = measure([Contender("ours", partial(_cli, fleet.config)),
                             Contender("floor", partial(subprocess.run, cmd, check=True))],
                            max(3, repeats // 2))
            rows.append(Row(f"no-op pass, {per} tenants, {label}, whole process",
                            "`reconcile --dry-run` process", median(t["ours"]),
                            "floor as a python process", median(t["floor"])))
        if mode == "wal" and size <= wal_held_max:
            with tempfile.TemporaryDirectory() as work, Holders(fleet.paths, Path(work)):
                assert os.path.exists(fleet.paths[0] + "-wal")
                t = measure([Contender("ours", partial(_preview, inputs)),
                             Contender("pragma", partial(pragma_loop, fleet.paths))],
                            repeats)
            rows.append(Row(f"no-op pass, {per} tenants, WAL with -wal present (held open)",
                            "engine.preview (observe+plan)", median(t["ours"]),
                            "connect + PRAGMA user_version loop", median(t["pragma"]),
                            "≤ 1.2×", 1.2, note=per_tenant(median(t["ours"]), size)))
    return rows
