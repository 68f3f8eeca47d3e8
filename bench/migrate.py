"""Migrate N tenants v0 → v3: ``reconcile`` against the loops a user would write.

Why: a rollout must not be slower than the loop an operator would write by hand.
Baselines, all over the same files and the same three SQL scripts (bench/migrations):
* the lean loop: per file ``connect``, ``BEGIN IMMEDIATE``, the pending scripts,
  ``PRAGMA user_version``, ``COMMIT`` — the least work that is still correct;
* the lean loop under our contract (DESIGN §3: each step its own transaction with its
  ``user_version``), which says what the contract costs apart from our overhead;
* the loop a user would write with yoyo-migrations (``get_backend`` + ``apply_migrations``
  per file), a bench-only extra (bench/requirements.txt).
Files are WAL (what ``reconcile`` creates) or rollback-journal (legacy files it adopted).
Ours is the real ``reconcile`` process (start-up included) with ``parallel: 1`` (each
step its own transaction, and ``transaction: tenant``: all of a tenant's steps in one) and
with each ``--parallel`` setting; the fastest is reported as "best". Every contender
starts from the same pristine v0 fleet (reset before each run, untimed) and is checked
once to leave every file at v3.
"""

from __future__ import annotations

import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from bench import fleets
from bench.noop import RECONCILE
from bench.timing import Contender, Row, measure, median
from reconciler.sqltext import split_statements

SCRIPTS = tuple(tuple(st.sql for st in split_statements(p.read_text()))
                for p in sorted(fleets.MIGRATIONS.glob("*.sql")))


def lean_loop(paths: Sequence[str]) -> None:
    for p in paths:
        conn = sqlite3.connect(p, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            for script in SCRIPTS[current:]:
                for sql in script:
                    conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {len(SCRIPTS)}")
            conn.execute("COMMIT")
        finally:
            conn.close()


def lean_threads(paths: Sequence[str], threads: int) -> None:
    """The lean loop spread over ``threads`` (what this machine's disk allows at best)."""
    chunks = [paths[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lean_loop, chunks))


def lean_loop_per_step(paths: Sequence[str]) -> None:
    """The lean loop under our contract: one transaction per step with its
    ``user_version`` (DESIGN §3) and a ``quick_check`` health gate per tenant (§6); in
    WAL mode steps commit with ``synchronous = NORMAL``, as ``reconcile`` does (closing
    the connection checkpoints and syncs them)."""
    for p in paths:
        conn = sqlite3.connect(p, isolation_level=None)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                conn.execute("PRAGMA synchronous = NORMAL")
            while True:
                conn.execute("BEGIN IMMEDIATE")
                current = conn.execute("PRAGMA user_version").fetchone()[0]
                if current >= len(SCRIPTS):
                    conn.execute("COMMIT")
                    break
                for sql in SCRIPTS[current]:
                    conn.execute(sql)
                conn.execute(f"PRAGMA user_version = {current + 1}")
                conn.execute("COMMIT")
            if conn.execute("PRAGMA quick_check").fetchall() != [("ok",)]:
                raise SystemExit(f"{p} failed quick_check")
        finally:
            conn.close()


def yoyo_loop(paths: Sequence[str], directory: Path) -> None:
    from yoyo import get_backend, read_migrations  # type: ignore[import-untyped,import-not-found,unused-ignore]

    migrations = read_migrations(str(directory))
    for p in paths:
        backend = get_backend(f"sqlite:///{p}")
        with backend.lock():
            backend.apply_migrations(backend.to_apply(migrations))
        backend.connection.close()


def reconcile(config: Path) -> None:
    with tempfile.TemporaryFile("w+") as err:
        r = subprocess.run([RECONCILE, "-c", str(config), "--log-format", "json"],
                           stdout=subprocess.DEVNULL, stderr=err, check=False)
        if r.returncode != 0:
            err.seek(0)
            raise SystemExit(f"reconcile -c {config} exited {r.returncode}: "
                             f"{err.read()[-2000:]}")


def at_latest(paths: Sequence[str]) -> bool:
    for p in paths:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        try:
            v = conn.execute("PRAGMA user_version").fetchone()[0]
            tags = conn.execute("SELECT count(*) FROM documents WHERE tag IS NULL").fetchone()[0]
        finally:
            conn.close()
        if (v != len(SCRIPTS) and not _yoyo_done(p)) or tags:
            return False
    return True


def _yoyo_done(path: str) -> bool:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        n = conn.execute("SELECT count(*) FROM _yoyo_migration").fetchone()[0]
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
    return bool(n == len(SCRIPTS))


def run(n: int, repeats: int, root: Path, parallels: Sequence[int], mode: str = "wal"
        ) -> list[Row]:
    fleet = fleets.get(fleets.FleetSpec(n, mode=mode, version=0), root)
    migrations = fleet.root / "migrations"
    runs: dict[str, Callable[[], object]] = {
        "lean": partial(lean_loop, fleet.paths),
        "lean-step": partial(lean_loop_per_step, fleet.paths),
        "lean-4": partial(lean_threads, fleet.paths, 4),
        "yoyo": partial(yoyo_loop, fleet.paths, migrations),
        "p1": partial(reconcile, fleet.config_with(parallel=1)),
        # rollout.transaction: tenant — every pending step in one transaction (issue 11)
        "t1": partial(reconcile, fleet.config_with(parallel=1, transaction="tenant")),
    }
    for par in parallels:
        runs[f"p{par}"] = partial(reconcile, fleet.config_with(parallel=par))
    for label, fn in runs.items():  # each must really migrate (untimed check)
        fleet.reset()
        fn()
        if not at_latest(fleet.paths):
            raise SystemExit(f"migrate contender {label} left files below v{len(SCRIPTS)}")
    t = measure([Contender(label, fn, setup=fleet.reset) for label, fn in runs.items()],
                repeats, warmup=False)
    fleet.reset()
    med = {label: median(xs) for label, xs in t.items()}
    best = min((f"p{p}" for p in parallels), key=lambda k: med[k], default="p1")
    what = f"migrate {n} tenants v0 → v3, {'WAL' if mode == 'wal' else 'rollback-journal'}"
    # the parallel target is for `parallel: 4`; the best setting is shown too
    targeted = "p4" if "p4" in med else best
    return [
        Row(f"{what}, parallel 1", "`reconcile`, parallel: 1", med["p1"],
            "lean loop (serial)", med["lean"], "≤ 1.2×", 1.2),
        Row(f"{what}, parallel {targeted[1:]}", f"`reconcile`, parallel: {targeted[1:]}",
            med[targeted], "lean loop (serial)", med["lean"], "≤ 0.7×", 0.7),
        *([Row(f"{what}, best parallel", f"`reconcile`, parallel: {best[1:]}", med[best],
               "lean loop (serial)", med["lean"])] if best != targeted else []),
        Row(f"{what}, parallel 1, transaction: tenant",
            "`reconcile`, parallel: 1, transaction: tenant", med["t1"], "lean loop (serial)",
            med["lean"], "≤ 1.2×", 1.2),
        Row(f"{what}, parallel 1, transaction: tenant vs step",
            "`reconcile`, parallel: 1, transaction: tenant", med["t1"],
            "`reconcile`, parallel: 1, transaction: step", med["p1"]),
        Row(f"{what}, parallel 1 vs same contract", "`reconcile`, parallel: 1", med["p1"],
            "lean loop under our contract (a transaction per step, quick_check gate)",
            med["lean-step"]),
        Row(f"{what}, the machine's ceiling", "lean loop in 4 threads", med["lean-4"],
            "lean loop (serial)", med["lean"], note="what parallelism buys on this disk at "
            "best: the floor for `parallel: 4`"),
        Row(f"{what}, parallel 1 vs yoyo", "`reconcile`, parallel: 1", med["p1"],
            "yoyo-migrations loop", med["yoyo"]),
        Row(f"{what}, best parallel vs yoyo", f"`reconcile`, parallel: {best[1:]}", med[best],
            "yoyo-migrations loop", med["yoyo"]),
        *(Row(f"{what}, parallel {p[1:]}", f"`reconcile`, parallel: {p[1:]}", med[p],
              "lean loop (serial)", med["lean"]) for p in med if p.startswith("p")
          and p not in ("p1", best, targeted)),
    ]
