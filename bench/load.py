"""What every command pays before it plans: ``engine.load``, and in it the read of the
registry's ``agent`` row (issue 15: a registry a region agent wrote scopes every
command on that host to its region, so ``load`` reads that row each time).

Ours: ``engine.load`` — tenants.yaml, the migrations catalog and the revision, then the
agent row (``Registry.read``: a read lock and an ``immutable`` connection on a registry
at rest; SQLite's WAL protocol, with a heap wal-index, when a ``-wal`` is beside it).
Baseline: the same load without that read (``engine._load``, the garbage collector
paused as ``load`` pauses it), turn by turn in the same run (at least ``REPEATS``
times: a load of 1k tenants takes ~20 ms, so noise is large); the read alone is timed
as a third contender and given per command in the note.
Twice: the registry at rest, and held open by another process with an uncheckpointed
write in its ``-wal`` (as a running daemon's heartbeat keeps it).

The registry read is a copy of the fleet's, upgraded to this reconciler's version (an
``agent`` table without a row: one host serving every region), beside a tenants.yaml of
the same fleet: the fleet itself is not changed. Nothing here asserts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

from bench import fleets
from bench.timing import Contender, Row, measure, median
from reconciler import engine
from reconciler.registry import Registry

REPEATS = 15
#: a process holding the registry open with one write in its -wal (a daemon's heartbeat)
HOLD = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA wal_autocheckpoint = 0")
conn.execute("INSERT INTO settings (key, value) VALUES ('bench.load', '1') "
             "ON CONFLICT(key) DO UPDATE SET value = excluded.value")
print("ready", flush=True)
sys.stdin.read()
"""


def scratch(fleet: fleets.Fleet, work: Path) -> Path:
    """A tenants.yaml of ``fleet`` in ``work``, its registry an upgraded copy of the
    fleet's (the tenant files and migrations are the fleet's own, linked)."""
    central = work / "central.db"
    shutil.copyfile(fleet.central, central)
    Registry.open(central).close()  # upgraded: the agent table exists, no row
    (work / "data").symlink_to(fleet.central.parent)
    (work / "migrations").symlink_to(fleet.config.parent / "migrations")
    text = fleets.tenants_yaml(fleet.spec.tenants)
    config = work / "tenants.yaml"
    config.write_text(text.replace("  central: data/central.db\n", "  central: central.db\n"))
    return config


@contextmanager
def held(central: Path) -> Iterator[None]:
    """Another process holds ``central`` open, its ``-wal`` present, for the block."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(central)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"bench load: the registry holder exited ({proc.wait()})")
        if not Path(f"{central}-wal").exists():
            raise SystemExit("bench load: the held registry has no -wal")
        yield
    finally:
        proc.stdin.close()
        proc.wait(30)


def _read(central: Path) -> None:
    engine._registry_region(central, in_daemon=False)


def _lean(config: Path) -> None:
    """``engine.load`` but the agent-row read (its collector pause included)."""
    with engine.collector_paused():
        engine._load(config)


def run(fleet: fleets.Fleet, per: str, repeats: int) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        config = scratch(fleet, Path(tmp))
        central = Path(tmp) / "central.db"
        for label, state in (("registry at rest", nullcontext()),
                             ("registry held open (-wal present)", held(central))):
            with state:
                t = measure([Contender("ours", partial(engine.load, config)),
                             Contender("lean", partial(_lean, config)),
                             Contender("read", partial(_read, central))], max(repeats, REPEATS))
            read = median(t["read"])
            rows.append(Row(
                f"load, {per} tenants, {label}", "engine.load (with the agent-row read)",
                median(t["ours"]), "engine.load without it", median(t["lean"]),
                note=f"the read alone {read * 1e6:.0f} µs per command, "
                f"{read / median(t['lean']) * 100:.2f}% of the lean load"))
    return rows
